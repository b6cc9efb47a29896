"""The pure parts of incoming traffic: HTTP filters, rule scripts and dumps, node addresses."""

from __future__ import annotations

import pytest

from mirrord.agent.incoming.http_filter import HttpFilterError, Request, build_filter
from mirrord.agent.incoming.iptables import LEGACY, NFT, choose_backend
from mirrord.agent.incoming.node import gateways_from_route, local_addresses_from_fib_trie
from mirrord.agent.incoming.rules import (
    Owner,
    PortRules,
    SessionChains,
    add_port_script,
    create_chains_script,
    parse_nat_dump,
    remove_chains_script,
)


def req(method: str = "GET", target: str = "/", **headers: str) -> Request:
    return Request(method, target, [(k.replace("_", "-"), v) for k, v in headers.items()])


def test_header_filter_matches_name_colon_value_case_insensitively() -> None:
    f = build_filter(header_filter="^x-user: me$")
    assert f.matches(req(X_User="me"))
    assert f.matches(req(x_user="ME"))
    assert not f.matches(req(X_User="me2"))
    assert not f.matches(req())


def test_path_filter_matches_path_with_or_without_query() -> None:
    f = build_filter(path_filter="^/api/v1$")
    assert f.matches(req(target="/api/v1?x=1"))  # the path alone
    assert not f.matches(req(target="/api/v12"))
    q = build_filter(path_filter=r"x=1$")
    assert q.matches(req(target="/api/v1?x=1"))  # path + query
    assert build_filter(path_filter="^/API").matches(req(target="/api"))


def test_method_filter_is_a_name_not_a_regex() -> None:
    f = build_filter(method_filter="post")
    assert f.matches(req("POST"))
    assert not f.matches(req("GET"))
    assert not build_filter(method_filter="P.*").matches(req("POST"))


def test_all_of_and_any_of() -> None:
    conditions = [("header", "x-user: me"), ("path", "^/api"), ("method", "GET")]
    all_of = build_filter(all_of=conditions)  # type: ignore[arg-type]
    any_of = build_filter(any_of=conditions)  # type: ignore[arg-type]
    assert all_of.matches(req("GET", "/api", X_User="me"))
    assert not all_of.matches(req("GET", "/api"))
    assert any_of.matches(req("PUT", "/other", X_User="me"))
    assert not any_of.matches(req("PUT", "/other"))


def test_ports_limit_where_the_filter_applies() -> None:
    assert build_filter(header_filter="a", ports=[80]).applies_to(80)
    assert not build_filter(header_filter="a", ports=[80]).applies_to(8080)
    assert build_filter(header_filter="a").applies_to(8080)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"header_filter": "a", "path_filter": "b"}, {"path_filter": "("}, {"all_of": []}],
)
def test_bad_filters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(HttpFilterError):
        build_filter(**kwargs)  # type: ignore[arg-type]


CHAINS = SessionChains.for_session("0123456789abcdef0123")
RULES = PortRules(8080, 40000, "steal", ("10.0.0.1",), True)


def test_chain_names_fit_iptables() -> None:
    assert len(CHAINS.inbound) <= 28 and len(CHAINS.outbound) <= 28


def test_scripts_name_only_our_chains() -> None:
    script = create_chains_script(CHAINS, Owner(12, 34)) + add_port_script(RULES, CHAINS)
    assert "-j REDIRECT --to-ports 40000" in script
    assert "-s 10.0.0.1/32" in script  # node traffic skipped
    assert "-o lo" in script  # the pod's own loopback traffic
    for line in script.splitlines():
        if line.startswith(("-A", "-I")):
            assert "MIRRORD_" in line, line


DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MIRRORD_IN_aaaa - [0:0]
:MIRRORD_OUT_aaaa - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "mirrord:owner=12/34" -j MIRRORD_IN_aaaa
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -m comment --comment "mirrord:owner=12/34" -j MIRRORD_OUT_aaaa
-A MIRRORD_IN_aaaa -p tcp -m tcp --dport 80 -m comment --comment "mirrord:steal:80" \
-j REDIRECT --to-ports 999
COMMIT
""".replace("\\\n", "")


def test_dump_parsing_finds_owner_jumps_and_claims() -> None:
    chains = {c.name: c for c in parse_nat_dump(DUMP)}
    assert set(chains) == {"MIRRORD_IN_aaaa", "MIRRORD_OUT_aaaa"}
    inbound = chains["MIRRORD_IN_aaaa"]
    assert inbound.owner == Owner(12, 34)
    assert inbound.claims == (("steal", 80),)
    script = remove_chains_script(chains.values())
    assert "-D PREROUTING -m comment --comment mirrord:owner=12/34 -j MIRRORD_IN_aaaa" in script
    assert "-X MIRRORD_OUT_aaaa" in script
    assert "KUBE" not in script


def test_backend_choice() -> None:
    assert choose_backend({LEGACY: 3, NFT: 0}, "nft") == LEGACY
    assert choose_backend({LEGACY: 0, NFT: 2}, "legacy") == NFT
    assert choose_backend({LEGACY: 0, NFT: 0}, "legacy") == LEGACY
    assert choose_backend({LEGACY: 1, NFT: 1}, "nft") == NFT
    assert choose_backend({NFT: 0}, "legacy") == NFT  # only what is installed


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.213.1.0
        /24 link UNICAST
     |-- 10.213.1.1
        /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
"""

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask
eth0\t00000000\t0101D50A\t0003\t0\t0\t0\t00000000
eth0\t0001D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF
"""


def test_node_addresses_parsing() -> None:
    assert local_addresses_from_fib_trie(FIB_TRIE) == {"10.213.1.1"}
    assert gateways_from_route(ROUTE) == {"10.213.1.1"}


def test_relayed_sockets_never_wait_for_nagle() -> None:
    # asyncio only sets TCP_NODELAY when sock.proto == IPPROTO_TCP; ours say 0 (a 40 ms
    # stall per two-piece response, found by bench/incoming.py).
    import socket

    from mirrord.agent.incoming.sockets import make_marked_socket

    with make_marked_socket() as marked:
        assert marked.proto == 0
        assert marked.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_probes_keep_their_own_requests_only() -> None:
    from mirrord.agent.incoming.probes import NodeRequests, Probe, probe_set

    def req(target: str) -> Request:
        return Request("GET", target, [("x-user", "me")])

    probes = probe_set([Probe("http", "/healthz", "readiness"), Probe("grpc")])
    assert probes.requests and not probes.tcp
    assert probes.keeps(req("/healthz")) and probes.keeps(req("/healthz?full=1"))
    assert probes.keeps(req("/grpc.health.v1.Health/Check"))
    assert not probes.keeps(req("/healthzz")) and not probes.keeps(req("/api/healthz"))
    # On the node's connections: the probes to the pod, the rest as the user's filter says.
    assert not NodeRequests(probes).matches(req("/healthz"))
    assert NodeRequests(probes).matches(req("/other"))
    mine = build_filter(header_filter="^x-user: you$")
    assert not NodeRequests(probes, mine).matches(req("/other"))
    assert probe_set([Probe("tcp")]).tcp
    with pytest.raises(ValueError, match="unknown probe kind"):
        probe_set([Probe("exec")])
    with pytest.raises(ValueError, match="must start with '/'"):
        probe_set([Probe("http", "healthz")])


# -- service meshes (mesh.py), from rulesets as the meshes' init containers write them

LINKERD_NAT = """*nat
:PROXY_INIT_OUTPUT - [0:0]
:PROXY_INIT_REDIRECT - [0:0]
-A PREROUTING -m comment --comment "proxy-init/install-proxy-init-prerouting" -j PROXY_INIT_REDIRECT
-A OUTPUT -m comment --comment "proxy-init/install-proxy-init-output" -j PROXY_INIT_OUTPUT
-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "proxy-init/ignore-proxy-user-id" -j RETURN
-A PROXY_INIT_OUTPUT -o lo -m comment --comment "proxy-init/ignore-loopback" -j RETURN
-A PROXY_INIT_OUTPUT -p tcp -m comment --comment "proxy-init/redirect-all-outgoing-to-proxy-port" -j REDIRECT --to-ports 4140
-A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191,4567:4568 -m comment --comment "proxy-init/ignore-port" -j RETURN
-A PROXY_INIT_REDIRECT -p tcp -m comment --comment "proxy-init/redirect-all-incoming-to-proxy-port" -j REDIRECT --to-ports 4143
COMMIT
"""  # noqa: E501


def test_linkerd_is_detected_with_its_proxy_uid_and_skipped_ports() -> None:
    from mirrord.agent.incoming.mesh import detect_mesh

    mesh = detect_mesh(LINKERD_NAT)
    assert mesh is not None
    assert (mesh.vendor, mesh.proxy_uid) == ("linkerd", 2102)
    assert mesh.skip_ports == {4190, 4191, 4567, 4568}
    assert mesh.plaintext_hop(8080) and not mesh.plaintext_hop(4191)


def test_istio_ambient_kuma_and_no_mesh() -> None:
    from mirrord.agent.incoming.mesh import detect_mesh

    istio = (
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
    )
    ambient = detect_mesh(istio, mangle_dump="-A OUTPUT -j ISTIO_OUTPUT\n")
    assert ambient is not None and ambient.vendor == "istio-ambient" and not ambient.sidecar
    # Without istio-cni's ISTIO_PRERT rules to read: ztunnel's default mark, no probe source.
    assert (ambient.proxy_mark, ambient.probe_sources) == ("0x539/0xfff", ())
    assert ambient.plaintext_hop(8080) and not ambient.plaintext_hop(15008)
    assert "HBONE" in ambient.describe(8080)
    assert ambient.describe(15006) == "Istio ambient: port 15006 is ztunnel's own, taken as is"
    # Another mark and probe address, read from the rules.
    odd_nat = (
        "-A OUTPUT -j ISTIO_OUTPUT\n-A PREROUTING -j ISTIO_PRERT\n"
        "-A ISTIO_PRERT -s 169.254.9.9/32 -p tcp -m tcp -j ACCEPT\n"
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x77/0xff "
        "-j REDIRECT --to-ports 15006\n"
    )
    odd_ambient = detect_mesh(odd_nat, mangle_dump="-A OUTPUT -j ISTIO_OUTPUT\n")
    assert odd_ambient is not None
    assert (odd_ambient.proxy_mark, odd_ambient.probe_sources) == ("0x77/0xff", ("169.254.9.9",))
    kuma = detect_mesh("-A OUTPUT -p tcp -j KUMA_MESH_OUTBOUND\n")
    assert kuma is not None and (kuma.vendor, kuma.proxy_uid) == ("kuma", 5678)
    assert detect_mesh("-A OUTPUT -j KUBE-SERVICES\n-A PREROUTING -j DOCKER\n") is None
    # A negated owner match is not the proxy's uid.
    odd = detect_mesh("-A OUTPUT -j ISTIO_OUTPUT\n"
                      "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 7 -j RETURN\n")  # fmt: skip
    assert odd is not None and odd.proxy_uid == 1337


def test_a_meshed_port_is_redirected_in_output_only() -> None:
    from mirrord.agent.incoming.rules import PortRules, SessionChains

    chains = SessionChains.for_session("0123456789abcdef")
    tcp = "-p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN"
    redirect = "-m comment --comment mirrord:steal:8080 -j REDIRECT --to-ports 4000"
    rules = PortRules(8080, 4000, "steal", ("10.0.0.1",), False, mesh_uid=1337)
    assert rules.specs(chains) == [
        f"{chains.outbound} -o lo -m owner --uid-owner 1337 {tcp} {redirect}"
    ]
    with_localhost = PortRules(8080, 4000, "steal", (), True, mesh_uid=1337)
    assert with_localhost.specs(chains) == [f"{chains.outbound} -o lo {tcp} {redirect}"]


def test_an_ambient_port_is_also_taken_on_ztunnels_hop_by_its_mark() -> None:
    """PREROUTING as without a mesh (plaintext clients), plus ztunnel's marked hop in OUTPUT
    by a port-only DNAT (REDIRECT would answer its transparent peer from 127.0.0.1), before
    the loopback rule."""
    from mirrord.agent.incoming.rules import PortRules, SessionChains

    chains = SessionChains.for_session("0123456789abcdef")
    tcp = "-p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN"
    claim = "-m comment --comment mirrord:mirror:8080"
    rules = PortRules(8080, 4000, "mirror", (), True, mesh_mark="0x539/0xfff")
    assert rules.specs(chains) == [
        f"{chains.inbound} {tcp} {claim} -j REDIRECT --to-ports 4000",
        f"{chains.outbound} -o lo -m mark --mark 0x539/0xfff {tcp} {claim} "
        "-j DNAT --to-destination :4000",
        f"{chains.outbound} -o lo {tcp} {claim} -j REDIRECT --to-ports 4000",
    ]
