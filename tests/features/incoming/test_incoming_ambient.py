"""#18: steal and mirror in an Istio ambient pod. The target's netns gets istio-cni's in-pod
ruleset (plaintext inbound → 15006, outbound → 15001, ztunnel's sockets marked 0x539 exempt,
the connmark and policy route that bring the app's answers back to ztunnel) and a "ztunnel"
that does ztunnel's job there: terminates HBONE (here a CONNECT in TLS on 15008) and the
redirected plaintext, and opens the hop to the app from the client's own address (a
transparent socket) with its mark. Mesh clients in another pod reach the app only through
that hop; the local program must get their plaintext requests, filters must match them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.agent.incoming.mesh import detect_mesh
from mirrord.testpod import Pod
from tests.features.incoming.exec_world import PORT, ExecWorld, xworld
from tests.features.incoming.incoming_helpers import (
    LOGGING_SERVER,
    mirrord_rules,
    request,
    send_requests,
)
from tests.features.incoming.test_incoming_mesh import (
    PROXY_LIB,
    PY,
    ask,
    pod_requests,
    proxy_log,
    start_meshed,
    start_proxy,
)

__all__ = ["xworld"]  # the module-scoped fixture
PROBE_SOURCE = "169.254.7.127"
AMBIENT_RULES = f"""*mangle
:ISTIO_OUTPUT - [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -d {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
-A ISTIO_PRERT -s {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
COMMIT
"""  # noqa: E501  (istio-cni's own lines)

# ztunnel in the pod's netns (it runs as root, in its own pod, with the pod's sockets).
ZTUNNEL = (
    PROXY_LIB
    + r"""
MARK, IP_TRANSPARENT, SO_MARK = 0x539, 19, 36
hbone, inbound, outbound = listener(15008), listener(15006), listener(15001)
def marked(source=None):
    up = socket.socket()
    up.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    if source:  # the client's address, as ztunnel keeps it
        up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        up.bind((source, 0))
    return up
def serve(c, kind):
    try:
        peer = c.getpeername()[0]
        if kind == "hbone":
            c = ctx.wrap_socket(c, server_side=True)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += c.recv(1)
            ip, _, port = head.split()[1].decode().rpartition(":")
            port = int(port)
        else:
            ip, port = original_dst(c)
        up = marked(None if kind == "out" else peer)
        up.connect((ip, port))
        if kind == "hbone":
            c.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    except OSError as e:
        print("ZTUNNEL-ERROR", kind, e, flush=True); c.close(); return
    print("ZTUNNEL", kind, port, flush=True)
    relay(c, up)
threading.Thread(target=accept_loop, args=(outbound, serve, "out"), daemon=True).start()
threading.Thread(target=accept_loop, args=(inbound, serve, "plain"), daemon=True).start()
print("READY", flush=True)
accept_loop(hbone, serve, "hbone")
"""
)


def policy_route(pod: Pod) -> None:
    """istio-cni's route: the app's answers to ztunnel's transparent hop come back to it by
    the connmark."""
    for argv in (
        ["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"],
        ["ip", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100"],
    ):
        done = pod.run(argv)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def ambient(xworld: ExecWorld, tmp_path: Path) -> Iterator[Pod]:
    """A target pod in Istio ambient mode, with its ztunnel."""
    pod = xworld.net.add_pod("ambient", argv=[PY, "-c", LOGGING_SERVER, str(PORT)], wait_port=PORT)
    try:
        policy_route(pod)
        start_proxy(pod, tmp_path, ZTUNNEL, [15008, 15006, 15001], AMBIENT_RULES)
        yield pod
    finally:
        pod.close()


def hbone(world: ExecWorld, pod: Pod, requests: list[str]) -> list[str]:
    """Requests from a mesh client: each in its own HBONE tunnel to the app's port."""
    return ask(world, pod, requests, port=15008, tunnel=f"{pod.address}:{PORT}")


def plain(world: ExecWorld, pod: Pod, requests: list[str]) -> list[str]:
    answers = send_requests(world.client, pod.address, PORT, requests)
    return [answer.split("\r\n\r\n", 1)[-1] for answer in answers]


def test_the_mesh_is_what_we_think(xworld: ExecWorld, ambient: Pod) -> None:
    """Without mirrord both kinds of client reach the app through ztunnel, which keeps
    the client's address."""
    assert hbone(xworld, ambient, [request("/tunnel")]) == ["pod"]
    assert plain(xworld, ambient, [request("/plain")]) == ["pod"]
    assert pod_requests(ambient) == ["REQ GET /tunnel -", "REQ GET /plain -"]
    assert re.findall(r"ZTUNNEL (\w+) 8080", proxy_log(ambient)) == ["hbone", "plain"]
    dump = {t: ambient.run(["iptables-save", "-t", t]).stdout.decode() for t in ("nat", "mangle")}
    mesh = detect_mesh(dump["nat"], dump["mangle"])
    assert mesh is not None and mesh.vendor == "istio-ambient"
    assert (mesh.proxy_mark, mesh.probe_sources) == ("0x539/0xfff", (PROBE_SOURCE,))


@pytest.mark.parametrize("mode", ["steal", "mirror"])
def test_steal_and_mirror_take_ztunnels_plaintext_hop(
    xworld: ExecWorld, ambient: Pod, programs: dict[str, Path], mode: str
) -> None:
    world, run = start_meshed(xworld, ambient, programs, mode)
    me = {"x-user": "me"}
    try:
        run.wait_subscribed(mode)
        tunnelled = hbone(world, ambient, [request("/a"), request("/b", me)])
        plaintext = plain(world, ambient, [request("/c", me), request("/d")])
        log = run.wait_log("/d" if mode == "mirror" else "/c")
    finally:
        run.stop()
    said = run.log()
    assert (
        "service mesh in the target: Istio ambient: port 8080 is taken on ztunnel's plaintext "
        "hop to the app (its sockets marked 0x539/0xfff), after its HBONE mTLS"
    ) in said, said
    if mode == "steal":
        assert tunnelled == ["pod", "local"] and plaintext == ["local", "pod"]
        assert pod_requests(ambient) == ["REQ GET /a -", "REQ GET /d -"]
        taken = re.findall(r"REQ GET (/\w) me peer=([\d.]+):", log)
        # ztunnel's hop kept the mesh client's address: the program sees it as the peer.
        assert taken == [("/b", xworld.client.address), ("/c", xworld.client.address)]
    else:
        assert tunnelled == ["pod", "pod"] and plaintext == ["pod", "pod"]
        assert pod_requests(ambient) == [
            "REQ GET /a -", "REQ GET /b me", "REQ GET /c me", "REQ GET /d -"]  # fmt: skip
        assert re.findall(r"REQ GET (/\w)", log) == ["/a", "/b", "/c", "/d"]
    # The tunnelled requests went through ztunnel; the plaintext ones were taken before it.
    assert re.findall(r"ZTUNNEL (\w+) 8080", proxy_log(ambient)) == ["hbone", "hbone"]
    assert mirrord_rules(ambient) == []
    assert "ISTIO_PRERT" in ambient.run(["iptables-save", "-t", "nat"]).stdout.decode()
