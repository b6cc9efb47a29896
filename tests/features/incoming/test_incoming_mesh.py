"""#18: steal and mirror in a service mesh. The target pod's netns gets istio-iptables'
sidecar ruleset (inbound TCP → 15006, outbound → 15001, the proxy's uid 1337 exempt) and a
"sidecar" that does what Envoy does there: terminates the client's TLS on 15006 and opens
a plaintext connection to the app from 127.0.0.6 as uid 1337; on 15001 it passes the pod's
outbound connections through. Clients in another pod speak TLS to the pod, as mesh peers
do. The local program must get plaintext requests, and HTTP filters must match them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.agent.incoming.mesh import detect_mesh
from mirrord.testpod import Pod
from tests.features.incoming.exec_world import PORT, ExecWorld, Running, server_argv, xworld
from tests.features.incoming.incoming_helpers import LOGGING_SERVER, mirrord_rules, request
from tests.kube.fake_tls import ca

__all__ = ["xworld"]  # the module-scoped fixture
PY = "/usr/bin/python3"
ISTIO_NAT = """*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 9000 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""  # noqa: E501  (istio-iptables' own lines)

# What a mesh proxy does in these tests: TLS with the test CA's certificate (argv 1-2),
# listeners, the original destination of a redirected connection, a two-way relay.
PROXY_LIB = r"""
import os, select, socket, ssl, struct, sys, threading
cert, key, pod_ip = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def listener(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); return s
def original_dst(c):
    raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]
def relay(a, b):
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [])
            for s in ready:
                data = s.recv(65536)
                while isinstance(s, ssl.SSLSocket) and s.pending():
                    data += s.recv(s.pending())
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        pass
    finally:
        a.close(); b.close()
def accept_loop(s, serve, kind):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, kind), daemon=True).start()
"""

# The sidecar: binds as root, then runs as uid 1337 (its sockets are owned by that uid).
SIDECAR = (
    PROXY_LIB
    + r"""
inbound, outbound = listener(15006), listener(15001)
os.setgroups([]); os.setgid(1337); os.setuid(1337)
def serve(c, tls):
    try:
        ip, port = original_dst(c)
        if tls:
            c = ctx.wrap_socket(c, server_side=True)
        up = socket.socket()
        if tls:
            up.bind(("127.0.0.6", 0))  # Envoy's inbound passthrough source
            ip = pod_ip
        up.connect((ip, port))
    except OSError as e:
        print("SIDECAR-ERROR", e, flush=True); c.close(); return
    print("SIDECAR", "in" if tls else "out", port, flush=True)
    relay(c, up)
threading.Thread(target=accept_loop, args=(outbound, serve, False), daemon=True).start()
print("READY", flush=True)
accept_loop(inbound, serve, True)
"""
)

# Run in the client pod: TLS to the pod (a mesh peer), one request per connection; with a
# fourth argument HOST:PORT, first a CONNECT to it in the TLS (HBONE's shape, on HTTP/1.1).
TLS_CLIENT = r"""
import json, socket, ssl, sys
host, port, requests = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
tunnel = sys.argv[4] if len(sys.argv) > 4 else None
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = []
for req in requests:
    with ctx.wrap_socket(socket.create_connection((host, port), timeout=20)) as s:
        if tunnel:
            s.sendall(f"CONNECT {tunnel} HTTP/1.1\r\nHost: {tunnel}\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += s.recv(1)
            assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out.append(data.decode("latin-1").split("\r\n\r\n", 1)[-1])
print(json.dumps(out))
"""


PROXY_LOGS: dict[str, Path] = {}


def proxy_log(pod: Pod) -> str:
    return PROXY_LOGS[pod.name].read_text()


def start_proxy(pod: Pod, tmp_path: Path, script: str, ports: list[int], rules: str) -> None:
    """Start the pod's mesh proxy, then install the mesh's rules in its netns."""
    pem = ca().issue("mesh-app", "/CN=app", [f"subjectAltName=IP:{pod.address}"])
    PROXY_LOGS[pod.name] = tmp_path / "proxy.log"
    # The proxy reads them as root (the sidecar then drops to uid 1337).
    with PROXY_LOGS[pod.name].open("wb") as log:
        proxy = pod.spawn(
            [PY, "-c", script, str(pem.cert), str(pem.key), pod.address], stdout=log, stderr=log
        )
    for port in ports:
        pod.wait_listening(port)
    done = pod.run(["iptables-restore", "--noflush"], input=rules.encode())
    assert done.returncode == 0, done.stderr
    assert proxy.poll() is None


@pytest.fixture
def meshed(xworld: ExecWorld, tmp_path: Path) -> Iterator[Pod]:
    """A target pod with the Istio sidecar ruleset and a TLS-terminating sidecar."""
    pod = xworld.net.add_pod("meshed", argv=[PY, "-c", LOGGING_SERVER, str(PORT)], wait_port=PORT)
    try:
        start_proxy(pod, tmp_path, SIDECAR, [15006, 15001], ISTIO_NAT)
        yield pod
    finally:
        pod.close()


def start_meshed(
    xworld: ExecWorld, pod: Pod, programs: dict[str, Path], mode: str
) -> tuple[ExecWorld, Running]:
    """The python server under mirrord exec against a meshed pod: a steal filtered on
    `x-user: me`, or a mirror."""
    world = ExecWorld(xworld.net, pod, xworld.client, xworld.tmp)
    incoming: dict[str, object] = {"mode": mode}
    if mode == "steal":
        incoming["http_filter"] = {"header_filter": "x-user: me"}
    config = {"feature": {"network": {"incoming": incoming}}}
    return world, world.start(server_argv("python", programs, xworld.tmp), config)


def ask(
    world: ExecWorld, pod: Pod, requests: list[str], port: int = PORT, tunnel: str = ""
) -> list[str]:
    argv = [PY, "-c", TLS_CLIENT, pod.address, str(port), json.dumps(requests)]
    done = world.client.run(argv + ([tunnel] if tunnel else []))
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def pod_requests(pod: Pod) -> list[str]:
    return [line for line in pod.read_log().splitlines() if line.startswith("REQ")]


def test_the_mesh_is_what_we_think(xworld: ExecWorld, meshed: Pod) -> None:
    """Without mirrord: TLS from the client reaches the app in plaintext via the sidecar."""
    assert ask(xworld, meshed, [request("/plain")]) == ["pod"]
    assert pod_requests(meshed) == ["REQ GET /plain -"]
    mesh = detect_mesh(meshed.run(["iptables-save", "-t", "nat"]).stdout.decode())
    assert mesh is not None and (mesh.vendor, mesh.proxy_uid) == ("istio", 1337)
    assert mesh.skip_ports == {15008, 15090, 15021, 15020, 9000}


@pytest.mark.parametrize("mode", ["steal", "mirror"])
def test_steal_and_mirror_take_the_sidecars_plaintext_hop(
    xworld: ExecWorld, meshed: Pod, programs: dict[str, Path], mode: str
) -> None:
    world, run = start_meshed(xworld, meshed, programs, mode)
    try:
        run.wait_subscribed(mode)
        me = {"x-user": "me"}
        answers = ask(world, meshed, [request("/a"), request("/b", me), request("/c")])
        log = run.wait_log("/c" if mode == "mirror" else "/b")
    finally:
        run.stop()
    said = run.log()
    assert (
        "service mesh in the target: Istio sidecar: port 8080 is taken on the sidecar's "
        "plaintext hop to the app (uid 1337, over loopback), after its mTLS"
    ) in said, said
    if mode == "steal":
        assert answers == ["pod", "local", "pod"]
        assert pod_requests(meshed) == ["REQ GET /a -", "REQ GET /c -"]
        assert re.findall(r"REQ GET (/\w) me", log) == ["/b"]  # plaintext, filter matched
    else:
        assert answers == ["pod", "pod", "pod"]  # the pod answers; the program gets copies
        assert pod_requests(meshed) == ["REQ GET /a -", "REQ GET /b me", "REQ GET /c -"]
        assert re.findall(r"REQ GET (/\w)", log) == ["/a", "/b", "/c"]
    # The sidecar carried every request: nothing was taken before its TLS.
    assert proxy_log(meshed).count("SIDECAR in 8080") >= 3
    assert mirrord_rules(meshed) == []
    assert "ISTIO_INBOUND" in meshed.run(["iptables-save", "-t", "nat"]).stdout.decode()


def test_a_port_the_mesh_skips_is_taken_before_it(
    xworld: ExecWorld, meshed: Pod, programs: dict[str, Path]
) -> None:
    """Port 9000 is excluded from the sidecar (excludeInboundPorts): plaintext from the
    network, taken in PREROUTING as without a mesh."""
    meshed.spawn([PY, "-c", LOGGING_SERVER, "9000"])
    meshed.wait_listening(9000)
    world = ExecWorld(xworld.net, meshed, xworld.client, xworld.tmp)
    run = world.start(server_argv("python", programs, xworld.tmp, port=9000),
                      {"feature": {"network": {"incoming": {"mode": "steal"}}}})  # fmt: skip
    try:
        run.wait_subscribed("steal", port=9000)
        from tests.features.incoming.incoming_helpers import send_requests

        answers = send_requests(xworld.client, meshed.address, 9000, [request("/skip")])
    finally:
        run.stop()
    assert answers[0].endswith("local"), answers
    assert "port 9000 is not redirected to the sidecar, taken as is" in run.log()
