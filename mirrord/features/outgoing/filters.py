"""Where an outgoing connection goes: through the target (REMOTE) or stays LOCAL. Pure.

Rules, in order (upstream `feature.network.outgoing` / `dns` semantics):
1. DNS traffic (TCP or UDP to port 53): LOCAL when `dns.enabled` is false, or when a
   `filter.local` entry matches it explicitly (e.g. `:53`); otherwise REMOTE, whatever
   `tcp`/`udp`/`filter.remote` say — names must resolve in the pod for the rest to work.
2. `tcp: false` / `udp: false`: that protocol stays LOCAL.
3. Loopback destinations (127.0.0.0/8, ::1, and the unspecified address, which the
   kernel treats as loopback) mean the *pod's* loopback, except with `ignore_localhost`
   or when the program itself listens on that port locally: then LOCAL.
4. `filter.remote`: only matching entries go REMOTE. `filter.local`: matching entries stay
   LOCAL, the rest go REMOTE. No filter: REMOTE.

Filter entries: `[tcp://|udp://](name|address|address/prefix|[ipv6])[:port]`, or `:port`
alone. A port of 0 or none matches every port; no protocol matches both. Names are
matched by the addresses they resolve to in the pod (`names`, resolved once at start).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DNS_PORT = 53


class Route(Enum):
    LOCAL = "local"
    REMOTE = "remote"


class FilterSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class FilterEntry:
    protocol: str | None = None  # "tcp", "udp" or None for both
    name: str | None = None
    network: IPNetwork | None = None
    port: int = 0  # 0: any

    def matches(
        self, protocol: str, ip: bytes, port: int, names: Mapping[str, frozenset[bytes]]
    ) -> bool:
        if self.protocol is not None and self.protocol != protocol:
            return False
        if self.port and self.port != port:
            return False
        if self.network is not None:
            return ipaddress.ip_address(ip) in self.network
        if self.name is not None:
            return ip in names.get(self.name, frozenset())
        return True


def parse_entry(text: str) -> FilterEntry:
    rest = text.strip()
    protocol = None
    if "://" in rest:
        protocol, rest = rest.split("://", 1)
        protocol = protocol.lower()
        if protocol not in ("tcp", "udp"):
            raise FilterSyntaxError(f"{text!r}: protocol must be tcp or udp")
    host, port = rest, ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise FilterSyntaxError(f"{text!r}: missing ]")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(":"):
            raise FilterSyntaxError(f"{text!r}: unexpected text after ]")
        port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    elif rest.count(":") > 1 and "/" not in rest.rsplit(":", 1)[-1]:
        # A bare IPv6 address or subnet has no port.
        host, port = rest, ""
    if port and not port.isdigit():
        raise FilterSyntaxError(f"{text!r}: bad port {port!r}")
    port_n = int(port) if port else 0
    if port_n > 65535:
        raise FilterSyntaxError(f"{text!r}: port out of range")
    if not host:
        return FilterEntry(protocol=protocol, port=port_n)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return FilterEntry(protocol=protocol, name=host.lower().rstrip("."), port=port_n)
    return FilterEntry(protocol=protocol, network=network, port=port_n)


@dataclass(frozen=True)
class OutgoingRules:
    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    filter_mode: str | None = None  # "remote", "local" or None
    entries: tuple[FilterEntry, ...] = ()
    names: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    dns_enabled: bool = True
    # outgoing.unix_streams: unix stream socket paths that mean the target's socket
    # (upstream: any of the regexes matches somewhere in the path).
    unix_streams: tuple[re.Pattern[str], ...] = ()
    # dns.filter: the names of its entries, matched against the name in each DNS query
    # (UDP) the program sends to its nameserver; "local" answers those locally, "remote"
    # all but those. Address entries cannot match a name and are not used.
    dns_filter_mode: str | None = None
    dns_filter_names: frozenset[str] = frozenset()
    # The filters as written (--explain names the entry that decided).
    entry_texts: tuple[str, ...] = ()
    dns_filter_texts: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        tcp: bool = True,
        udp: bool = True,
        ignore_localhost: bool = False,
        filter_mode: str | None = None,
        filter_entries: Sequence[str] = (),
        dns_enabled: bool = True,
        unix_streams: Sequence[str] = (),
        dns_filter_mode: str | None = None,
        dns_filter_entries: Sequence[str] = (),
    ) -> OutgoingRules:
        """Raises ValueError for a bad filter entry or unix_streams regex."""
        try:
            unix = tuple(re.compile(r) for r in unix_streams)
        except re.error as e:
            raise ValueError(f"feature.network.outgoing.unix_streams: {e}") from None
        return cls(
            tcp=tcp,
            udp=udp,
            ignore_localhost=ignore_localhost,
            filter_mode=filter_mode,
            entries=tuple(parse_entry(e) for e in filter_entries),
            dns_enabled=dns_enabled,
            unix_streams=unix,
            dns_filter_mode=dns_filter_mode,
            entry_texts=tuple(filter_entries),
            dns_filter_texts=tuple(dns_filter_entries),
            dns_filter_names=frozenset(
                e.name.lower().rstrip(".")
                for e in (parse_entry(x) for x in dns_filter_entries)
                if e.name is not None and e.port in (0, DNS_PORT)
            ),
        )

    def dns_local(self, name: str) -> bool:
        """Whether a DNS query for `name` is answered locally (dns.filter)."""
        if self.dns_filter_mode is None:
            return False
        matched = name.lower().rstrip(".") in self.dns_filter_names
        return matched if self.dns_filter_mode == "local" else not matched

    def unix_remote(self, path: str) -> bool:
        """Whether a unix stream socket connect to `path` goes to the target's socket."""
        return any(r.search(path) for r in self.unix_streams)

    def hostnames(self) -> list[str]:
        """Names in the filter, to resolve in the pod before the program starts."""
        return sorted({e.name for e in self.entries if e.name is not None})

    def user_rules(self) -> list[str]:
        """The user's filter entries as `rule_for`/`dns_rule_for` name them (--explain)."""
        out = [
            f"feature.network.outgoing.filter.{self.filter_mode}[{i}] {t!r}"
            for i, t in enumerate(self.entry_texts)
        ]
        out += [
            f"feature.network.dns.filter.{self.dns_filter_mode}[{i}] {t!r}"
            for i, t in enumerate(self.dns_filter_texts)
        ]
        return out

    def rule_for(
        self, protocol: str, ip: bytes, port: int, program_listens: Callable[[], bool]
    ) -> str:
        """Which rule makes `route`'s decision, in words (--explain only)."""
        first = next(
            (i for i, e in enumerate(self.entries) if e.matches(protocol, ip, port, self.names)),
            None,
        )
        entry = None
        if first is not None and self.filter_mode is not None:
            text = self.entry_texts[first] if first < len(self.entry_texts) else "?"
            entry = f"feature.network.outgoing.filter.{self.filter_mode}[{first}] {text!r}"
        if port == DNS_PORT:
            if not self.dns_enabled:
                return "feature.network.dns off"
            if self.filter_mode == "local" and entry is not None:
                return entry
            return "DNS is remote (default)"
        if not (self.tcp if protocol == "tcp" else self.udp):
            return f"feature.network.outgoing.{protocol} off"
        addr = ipaddress.ip_address(ip)
        if addr.is_loopback or addr.is_unspecified:
            if self.ignore_localhost:
                return "feature.network.outgoing.ignore_localhost"
            if program_listens():
                return "the localhost rule (the program listens on that port)"
        if entry is not None:
            return entry
        if self.filter_mode is not None:
            return f"feature.network.outgoing.filter.{self.filter_mode}: no entry matched"
        return "outgoing traffic is remote (default)"

    def dns_rule_for(self, name: str) -> str:
        """Which rule answers a query for `name` here or in the pod (--explain only)."""
        wanted = name.lower().rstrip(".")
        for index, text in enumerate(self.dns_filter_texts):
            entry = parse_entry(text)
            if entry.name is not None and entry.name == wanted and entry.port in (0, DNS_PORT):
                return f"feature.network.dns.filter.{self.dns_filter_mode}[{index}] {text!r}"
        if self.dns_filter_mode is not None:
            return f"feature.network.dns.filter.{self.dns_filter_mode}: no entry matched"
        return "DNS is remote (default)"

    def route(
        self, protocol: str, ip: bytes, port: int, program_listens: Callable[[], bool]
    ) -> Route:
        """program_listens: whether the traced program listens on `port` locally (only
        asked for loopback destinations: it costs a scan of /proc)."""
        matched = any(e.matches(protocol, ip, port, self.names) for e in self.entries)
        if port == DNS_PORT:
            if not self.dns_enabled or (self.filter_mode == "local" and matched):
                return Route.LOCAL
            return Route.REMOTE
        if not (self.tcp if protocol == "tcp" else self.udp):
            return Route.LOCAL
        addr = ipaddress.ip_address(ip)
        loopback = addr.is_loopback or addr.is_unspecified
        if loopback and (self.ignore_localhost or program_listens()):
            return Route.LOCAL
        if self.filter_mode == "remote":
            return Route.REMOTE if matched else Route.LOCAL
        if self.filter_mode == "local":
            return Route.LOCAL if matched else Route.REMOTE
        return Route.REMOTE
