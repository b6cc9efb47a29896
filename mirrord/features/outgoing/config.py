"""feature.network.outgoing / dns config → the supervisor's OutgoingRules (pure)."""

from __future__ import annotations

from mirrord.config import ConfigError, MirrordConfig
from mirrord.config.errors import bad_regex
from mirrord.config.models import DnsConfig, OutgoingConfig, as_list
from mirrord.features.outgoing.filters import FilterSyntaxError, OutgoingRules, parse_entry


def outgoing_rules(config: MirrordConfig) -> OutgoingRules | None:
    """None when nothing goes through the target (network or outgoing and DNS off)."""
    network = config.feature.network
    if network is False:
        return None
    net = config.feature.network_config
    outgoing = net.outgoing
    out = outgoing if isinstance(outgoing, OutgoingConfig) else OutgoingConfig()
    enabled = outgoing is not False
    dns = net.dns
    dns_enabled = config.feature.dns_enabled
    tcp = enabled and out.tcp is not False
    udp = enabled and out.udp is not False
    if not (tcp or udp or dns_enabled):
        return None
    dns_mode: str | None = None
    dns_entries: list[str] = []
    if isinstance(dns, DnsConfig) and dns.filter is not None:
        if dns.filter.remote is not None:
            dns_mode, dns_entries = "remote", as_list(dns.filter.remote)
        else:
            dns_mode, dns_entries = "local", as_list(dns.filter.local)
    mode: str | None = None
    entries: list[str] = []
    if out.filter is not None:
        if out.filter.remote is not None:
            mode, entries = "remote", as_list(out.filter.remote)
        else:
            mode, entries = "local", as_list(out.filter.local)
    unix_streams = as_list(out.unix_streams) if enabled else []
    errors = _entry_errors("feature.network.outgoing.filter", mode, entries)
    errors += _entry_errors("feature.network.dns.filter", dns_mode, dns_entries)
    for index, pattern in enumerate(unix_streams):
        problem = bad_regex(f"feature.network.outgoing.unix_streams[{index}]", pattern)
        errors += [problem] if problem else []
    if errors:
        raise ConfigError("<config>", errors)
    return OutgoingRules.build(
        tcp=tcp,
        udp=udp,
        ignore_localhost=bool(out.ignore_localhost),
        filter_mode=mode,
        filter_entries=entries,
        dns_enabled=dns_enabled,
        unix_streams=unix_streams,
        dns_filter_mode=dns_mode if dns_enabled else None,
        dns_filter_entries=dns_entries,
    )


def _entry_errors(key: str, mode: str | None, entries: list[str]) -> list[str]:
    errors: list[str] = []
    for index, entry in enumerate(entries):
        try:
            parse_entry(entry)
        except FilterSyntaxError as e:
            errors.append(f"{key}.{mode}[{index}]: {e}")
    return errors
