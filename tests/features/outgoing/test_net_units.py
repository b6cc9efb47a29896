"""Pure parts of the network feature, without I/O: filters, sockaddrs, DNS wire, the
seccomp argument test, port-forward specs, config mapping."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from mirrord.config.models import MirrordConfig
from mirrord.features.outgoing.config import outgoing_rules
from mirrord.features.outgoing.filters import FilterSyntaxError, OutgoingRules, Route, parse_entry
from mirrord.features.sockets.sockaddr import (
    build_sockaddr,
    loopback_kind,
    parse_sockaddr,
)
from mirrord.portforward import ForwardSpec, PortForwardError, parse_spec
from mirrord.supervisor.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_TRACE,
    Rule,
    build_filter,
    run_filter,
)
from mirrord.wire.dns import TYPE_A, answer_addresses, build_query, query_name

V4 = socket.inet_aton


def never() -> bool:
    return False


def always() -> bool:
    return True


@pytest.mark.parametrize(
    ("text", "proto", "net", "name", "port"),
    [
        ("tcp://1.1.1.0/24:1337", "tcp", "1.1.1.0/24", None, 1337),
        ("udp://10.0.0.1", "udp", "10.0.0.1/32", None, 0),
        ("host.name", None, None, "host.name", 0),
        ("Host.Name:80", None, None, "host.name", 80),
        (":53", None, None, None, 53),
        ("[fd00::1]:443", None, "fd00::1/128", None, 443),
        ("fd00::/64", None, "fd00::/64", None, 0),
    ],
)
def test_filter_entry_syntax(
    text: str, proto: str | None, net: str | None, name: str | None, port: int
) -> None:
    e = parse_entry(text)
    assert (e.protocol, str(e.network) if e.network else None, e.name, e.port) == (
        proto,
        net,
        name,
        port,
    )


@pytest.mark.parametrize("text", ["http://x", "x:port", "[::1", "x:70000"])
def test_filter_entry_errors(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_entry(text)


def test_routes() -> None:
    plain = OutgoingRules.build()
    assert plain.route("tcp", V4("10.0.0.5"), 80, never) is Route.REMOTE
    assert plain.route("tcp", V4("127.0.0.1"), 80, never) is Route.REMOTE  # pod's loopback
    assert plain.route("tcp", V4("127.0.0.1"), 80, always) is Route.LOCAL  # we listen there
    ignore = OutgoingRules.build(ignore_localhost=True)
    assert ignore.route("tcp", V4("127.0.0.1"), 80, never) is Route.LOCAL
    local = OutgoingRules.build(filter_mode="local", filter_entries=["tcp://10.0.0.0/8:80"])
    assert local.route("tcp", V4("10.1.2.3"), 80, never) is Route.LOCAL
    assert local.route("udp", V4("10.1.2.3"), 80, never) is Route.REMOTE
    assert local.route("tcp", V4("10.1.2.3"), 81, never) is Route.REMOTE
    remote = OutgoingRules.build(filter_mode="remote", filter_entries=["db.svc"])
    remote = OutgoingRules(**{**remote.__dict__, "names": {"db.svc": frozenset({V4("10.9.9.9")})}})
    assert remote.route("tcp", V4("10.9.9.9"), 5432, never) is Route.REMOTE
    assert remote.route("tcp", V4("10.9.9.8"), 5432, never) is Route.LOCAL
    # DNS goes remote even when a remote filter does not name it; dns=false keeps it local.
    assert remote.route("udp", V4("10.0.0.10"), 53, never) is Route.REMOTE
    assert (
        OutgoingRules.build(dns_enabled=False).route("udp", V4("10.0.0.10"), 53, never)
        is Route.LOCAL
    )
    assert (
        OutgoingRules.build(filter_mode="local", filter_entries=[":53"]).route(
            "tcp", V4("10.0.0.10"), 53, never
        )
        is Route.LOCAL
    )
    assert OutgoingRules.build(udp=False).route("udp", V4("10.0.0.1"), 99, never) is Route.LOCAL


def test_sockaddrs_round_trip() -> None:
    raw = build_sockaddr(socket.AF_INET, V4("10.1.2.3"), 8080)
    d = parse_sockaddr(raw)
    assert d is not None and d.ip_text == "10.1.2.3" and d.port == 8080 and d.raw == raw
    mapped = build_sockaddr(socket.AF_INET6, V4("127.0.0.1"), 9)
    m = parse_sockaddr(mapped)
    assert m is not None and m.family == socket.AF_INET6 and m.ip == V4("127.0.0.1")
    assert loopback_kind(m) == "v4"
    six = parse_sockaddr(
        build_sockaddr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1"), 1)
    )
    assert six is not None and loopback_kind(six) == "v6"
    assert parse_sockaddr(b"\x01\x00/tmp/sock") is None  # AF_UNIX


@pytest.mark.parametrize(
    "family,text",
    [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "127.255.0.9"),
        (socket.AF_INET, "0.0.0.0"),
        (socket.AF_INET, "10.1.2.3"),
        (socket.AF_INET, "128.0.0.1"),
        (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::"),
        (socket.AF_INET6, "::2"),
        (socket.AF_INET6, "fe80::1"),
        (socket.AF_INET6, "::ffff:127.0.0.1"),
        (socket.AF_INET6, "::ffff:10.0.0.1"),
    ],
)
def test_is_loopback_as_ipaddress_says(family: int, text: str) -> None:
    """The byte comparison says what ipaddress says (loopback or unspecified, a
    v4-mapped address judged as its IPv4 one)."""
    d = parse_sockaddr(build_sockaddr(family, socket.inet_pton(family, text), 1))
    assert d is not None
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    assert d.is_loopback == (ip.is_loopback or ip.is_unspecified)


def test_dns_wire() -> None:
    q = build_query(7, "svc.pod.internal", TYPE_A)
    assert query_name(q) == "svc.pod.internal"
    # A reply: the question, then one A record whose name is a pointer to it.
    answer = b"\xc0\x0c" + bytes([0, 1, 0, 1, 0, 0, 0, 60, 0, 4]) + V4("10.0.0.7")
    reply = bytearray(q)
    reply[2:4] = b"\x81\x80"
    reply[6:8] = b"\x00\x01"
    addrs, tc = answer_addresses(bytes(reply) + answer, 7)
    assert addrs == [V4("10.0.0.7")] and not tc


def test_seccomp_stops_only_with_an_address() -> None:
    prog = build_filter([Rule(44, arg_nonzero=4), Rule(42)], notify=False)
    trace = SECCOMP_RET_TRACE | 44
    assert run_filter(prog, nr=44, args=(3, 0x1000, 10, 0, 0, 0)) == SECCOMP_RET_ALLOW
    assert run_filter(prog, nr=44, args=(3, 0x1000, 10, 0, 0x7FFF0000, 16)) == trace
    assert run_filter(prog, nr=44, args=(3, 0, 0, 0, 0x7F_0000_0000, 16)) == trace  # high half
    assert run_filter(prog, nr=42) == SECCOMP_RET_TRACE | 42
    assert run_filter(prog, nr=1) == SECCOMP_RET_ALLOW


def test_port_forward_specs() -> None:
    assert parse_spec("8080:svc:80") == ForwardSpec(8080, "svc", 80)
    assert parse_spec("svc:80") == ForwardSpec(80, "svc", 80)
    assert parse_spec("9000:[fd00::1]:443") == ForwardSpec(9000, "fd00::1", 443)
    for bad in ("svc", "a:b:c", "1:2:3:4", "x:99999"):
        with pytest.raises(PortForwardError):
            parse_spec(bad)


def test_config_mapping() -> None:
    cfg = MirrordConfig.model_validate(
        {"feature": {"network": {"outgoing": {"udp": False, "filter": {"local": ":5432"}}}}}
    )
    rules = outgoing_rules(cfg)
    assert rules is not None and rules.udp is False and rules.filter_mode == "local"
    off = MirrordConfig.model_validate({"feature": {"network": {"outgoing": False, "dns": False}}})
    assert outgoing_rules(off) is None
