"""feature.network.outgoing / dns config → the supervisor's OutgoingRules (pure)."""

from __future__ import annotations

from mirrord.config import MirrordConfig
from mirrord.config.models import DnsConfig, NetworkConfig, OutgoingConfig
from mirrord.supervisor.net.filters import OutgoingRules


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def outgoing_rules(config: MirrordConfig) -> OutgoingRules | None:
    """None when nothing goes through the target (network or outgoing and DNS off)."""
    network = config.feature.network
    if network is False:
        return None
    net = network if isinstance(network, NetworkConfig) else NetworkConfig()
    outgoing = net.outgoing
    out = outgoing if isinstance(outgoing, OutgoingConfig) else OutgoingConfig()
    enabled = outgoing is not False
    dns = net.dns
    dns_enabled = dns is not False and not (isinstance(dns, DnsConfig) and dns.enabled is False)
    tcp = enabled and out.tcp is not False
    udp = enabled and out.udp is not False
    if not (tcp or udp or dns_enabled):
        return None
    dns_mode: str | None = None
    dns_entries: list[str] = []
    if isinstance(dns, DnsConfig) and dns.filter is not None:
        if dns.filter.remote is not None:
            dns_mode, dns_entries = "remote", _as_list(dns.filter.remote)
        else:
            dns_mode, dns_entries = "local", _as_list(dns.filter.local)
    mode: str | None = None
    entries: list[str] = []
    if out.filter is not None:
        if out.filter.remote is not None:
            mode, entries = "remote", _as_list(out.filter.remote)
        else:
            mode, entries = "local", _as_list(out.filter.local)
    return OutgoingRules.build(
        tcp=tcp,
        udp=udp,
        ignore_localhost=bool(out.ignore_localhost),
        filter_mode=mode,
        filter_entries=entries,
        dns_enabled=dns_enabled,
        unix_streams=_as_list(out.unix_streams) if enabled else [],
        dns_filter_mode=dns_mode if dns_enabled else None,
        dns_filter_entries=dns_entries,
    )
