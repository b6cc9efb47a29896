"""#18: steal and mirror for pods with IPv6 addresses (dual-stack and IPv6 clients): the
agent puts the same redirects in ip6tables, listens on both families, reads IPv6's original
destination, and passes unmatched requests to the pod over IPv6. Nothing is left in either
family's tables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod
from tests.features.incoming.exec_world import PORT, ExecWorld, server_argv
from tests.features.incoming.incoming_helpers import RAW_CLIENT, mirrord_rules, request

PY = "/usr/bin/python3"
# The pod's service on both families: answers "pod", logs one line per request with the peer.
DUAL_SERVER = """
import socket, sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("REQ", self.command, self.path, self.headers.get("x-user", "-"),
              self.client_address[0], flush=True)
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"pod")
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def world6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecWorld]:
    tmp = tmp_path_factory.mktemp("incoming-ipv6")
    with Network(ipv6=True) as net:
        target = net.add_pod("target6", argv=[PY, "-c", DUAL_SERVER, str(PORT)], wait_port=PORT)
        client = net.add_pod("client6", argv=["/bin/sleep", "600"])
        yield ExecWorld(net, target, client, tmp)


def ask(client: Pod, host: str, requests: list[str]) -> list[str]:
    done = client.run([PY, "-c", RAW_CLIENT, host, str(PORT), json.dumps(requests)])
    assert done.returncode == 0, done.stderr
    return [a.split("\r\n\r\n", 1)[1] for a in json.loads(done.stdout)]


def rules6(pod: Pod) -> list[str]:
    found = []
    for argv in (["ip6tables-legacy-save"], ["ip6tables-nft-save"]):
        done = pod.run(argv)
        found += [line for line in done.stdout.decode().splitlines() if "mirrord" in line.lower()]
    return found


def test_a_filtered_steal_over_ipv6_and_ipv4(world6: ExecWorld, programs: dict[str, Path]) -> None:
    target, client = world6.target, world6.client
    assert target.address6 is not None
    config = {"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": "x-user: me"}}}}}  # fmt: skip
    run = world6.start(server_argv("go", programs, world6.tmp), config)
    try:
        run.wait_subscribed("steal")
        assert any("mirrord:steal:8080" in line for line in rules6(target)), rules6(target)
        me = {"x-user": "me"}
        over6 = ask(client, target.address6, [request("/a6"), request("/b6", me)])
        over4 = ask(client, target.address, [request("/a4"), request("/b4", me)])
        log = run.wait_log("/b4")
    finally:
        run.stop()
    assert over6 == ["pod", "local"] and over4 == ["pod", "local"]
    pod_log = [line for line in target.read_log().splitlines() if line.startswith("REQ")]
    # Unmatched requests reached the pod over their own family (from the agent's socket).
    assert any(line.startswith("REQ GET /a6 -") for line in pod_log), pod_log
    assert any(line.startswith("REQ GET /a4 -") for line in pod_log), pod_log
    # The program saw the real peers, IPv6 and IPv4.
    assert re.search(rf"REQ GET /b6 me peer=\[?{re.escape(client.address6 or '')}", log), log
    assert re.search(rf"REQ GET /b4 me peer={re.escape(client.address)}:", log), log
    assert rules6(target) == [] and mirrord_rules(target) == []


def test_an_unfiltered_steal_and_a_mirror_over_ipv6(
    world6: ExecWorld, programs: dict[str, Path]
) -> None:
    target, client = world6.target, world6.client
    assert target.address6 is not None
    for mode, expected in (("steal", "local"), ("mirror", "pod")):
        config = {"feature": {"network": {"incoming": {"mode": mode}}}}
        run = world6.start(server_argv("go", programs, world6.tmp), config)
        try:
            run.wait_subscribed(mode)
            path = f"/{mode}6"
            assert ask(client, target.address6, [request(path)]) == [expected]
            assert path in run.wait_log(path)
        finally:
            run.stop()
        assert rules6(target) == [] and mirrord_rules(target) == []


async def test_without_ip6tables_ipv4_still_works(
    world6: ExecWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A node image without ip6tables (or a kernel without IPv6 nat): the session's rules
    go to iptables, IPv6 is said once in the agent's log, nothing fails."""
    from mirrord.agent.incoming import iptables
    from mirrord.agent.incoming.rules import Owner, SessionChains, create_chains_script

    target = world6.target
    monkeypatch.setattr(iptables, "ip6", lambda backend: "ip6tables-not-installed")
    counts = await iptables.available_rule_counts(target.main_pid)
    tables = iptables.NetnsIptables(target.main_pid, iptables.choose_backend(counts, None), v6=True)
    chains = SessionChains.for_session("feedfacefeedface")
    await tables.restore(create_chains_script(chains, Owner(1, 1)))
    assert tables.v6 is False
    assert "IPv6 traffic of target" in caplog.text
    assert any(c.name == chains.inbound for c in await tables.chains())
    await tables.remove_chains(lambda c: c.name in (chains.inbound, chains.outbound))
    assert mirrord_rules(target) == []


async def test_a_dead_agents_chains_are_removed_from_both_families(world6: ExecWorld) -> None:
    """Leftovers of an agent that died (SIGKILL, node reboot of its pod) on a dual-stack
    target: the next agent's first subscription removes them from ip6tables too."""
    from mirrord.agent.incoming import iptables
    from mirrord.agent.incoming.rules import (
        Owner,
        PortRules,
        SessionChains,
        add_port_script,
        create_chains_script,
    )

    target = world6.target
    counts = await iptables.available_rule_counts(target.main_pid)
    backend = iptables.choose_backend(counts, None)
    tables = iptables.NetnsIptables(target.main_pid, backend, v6=True)
    chains = SessionChains.for_session("deadbeefdeadbeef")
    dead = Owner(2**22 + 7, 1)  # a pid beyond pid_max: that agent is gone
    rules = PortRules(PORT, 40000, "steal", ("10.213.0.1", "fd6d:72:0::1"), True)
    await tables.restore(create_chains_script(chains, dead) + add_port_script(rules, chains))
    assert tables.v6 and rules6(target), "the IPv6 rules were installed"
    removed = await iptables.remove_leftovers(target.main_pid, list(counts))
    assert f"{chains.inbound} (IPv6)" in removed and chains.inbound in removed
    assert rules6(target) == [] and mirrord_rules(target) == []
