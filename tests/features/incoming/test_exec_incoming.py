"""Incoming traffic end to end: local servers under `mirrord exec --target pid/N` receive
the target pod's traffic (steal, mirror, HTTP filter, port options), and the target's
netns has no mirrord rule left after each run, however it ends."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.features.incoming.exec_world import PORT, PY_SERVER, ExecWorld, server_argv, xworld
from tests.features.incoming.h2_helpers import NODE_H2_SERVER, node_client
from tests.features.incoming.incoming_helpers import (
    mirrord_rules,
    request,
    send_requests,
    send_requests_from_host,
    wait_until,
)
from tests.features.outgoing.net_world import agent_of, other_end_owners

pytestmark = pytest.mark.root
__all__ = ["xworld"]  # the module-scoped fixture

SERVERS = ["python", "go", "busybox", "node"]
PATH = {"busybox": "/index.html"}  # busybox serves files: ask for the one that exists


def steal(**extra: object) -> dict[str, object]:
    return {"feature": {"network": {"incoming": {"mode": "steal", **extra}}}}


def mirror(**extra: object) -> dict[str, object]:
    return {"feature": {"network": {"incoming": {"mode": "mirror", **extra}}}}


def body(answer: str) -> str:
    return answer.split("\r\n\r\n", 1)[1]


def no_date(answer: str) -> str:
    return re.sub(r"\r\nDate: [^\r]*", "", answer)


@pytest.fixture(autouse=True)
def _clean_after(xworld: ExecWorld) -> Iterator[None]:
    yield
    assert mirrord_rules(xworld.target) == []


# Every server with the direct delivery of a local agent; two over the agent's streams.
WAYS = [(kind, False) for kind in SERVERS] + [("python", True), ("node", True)]
WAY_IDS = [f"{kind}-{'stream' if stream else 'direct'}" for kind, stream in WAYS]


# And the python and Go servers on the ptrace engine.
STEAL_WAYS = [(k, s, None) for k, s in WAYS] + [
    ("python", False, "ptrace"),
    ("go", False, "ptrace"),
]
STEAL_IDS = [*WAY_IDS, "python-ptrace", "go-ptrace"]


@pytest.mark.parametrize(("kind", "stream", "engine"), STEAL_WAYS, ids=STEAL_IDS)
def test_steal(
    xworld: ExecWorld, programs: dict[str, Path], kind: str, stream: bool, engine: str | None
) -> None:
    path = PATH.get(kind, f"/steal-{kind}")
    before = len(xworld.pod_requests())
    run = xworld.start(server_argv(kind, programs, xworld.tmp), steal(), stream, engine)
    try:
        run.wait_subscribed("steal")
        n = 1 if kind == "busybox" else 2  # busybox httpd closes after each answer
        answers = send_requests(xworld.client, xworld.target.address, PORT, [request(path)] * n)
        assert [body(a) for a in answers] == ["local"] * n
        log = run.wait_log(xworld.client.address)
        assert xworld.pod_requests()[before:] == []
    finally:
        run.stop()
    # accept/getpeername gave the client pod's address, not the proxy's loopback one.
    assert xworld.client.address in log, log
    if kind in ("python", "go"):
        assert f"local={xworld.target.address}:{PORT}" in log  # getsockname: the pod side


@pytest.mark.parametrize(("kind", "stream"), WAYS, ids=WAY_IDS)
def test_mirror(xworld: ExecWorld, programs: dict[str, Path], kind: str, stream: bool) -> None:
    path = f"/mirror-{kind}"
    req = request(path, {"Connection": "close"})
    direct = send_requests(xworld.client, xworld.target.address, PORT, [req])
    run = xworld.start(server_argv(kind, programs, xworld.tmp), mirror(), stream)
    try:
        run.wait_subscribed("mirror")
        mirrored = send_requests(xworld.client, xworld.target.address, PORT, [req])
        log = run.wait_log(path)
    finally:
        run.stop()
    assert [no_date(a) for a in mirrored] == [no_date(a) for a in direct]
    assert xworld.pod_requests()[-1].startswith(f"REQ GET {path}")
    assert path in log, log  # the local program got the copy


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_mirror_delivers_the_same_bytes(
    xworld: ExecWorld, programs: dict[str, Path], stream: bool
) -> None:
    req = request("/bytes", {"Connection": "close", "X-Odd": "a\tb  c"})
    run = xworld.start(server_argv("raw", programs, xworld.tmp), mirror(), stream)
    try:
        run.wait_subscribed("mirror")
        (answer,) = send_requests(xworld.client, xworld.target.address, PORT, [req])
        log = run.wait_log("RAW ")
    finally:
        run.stop()
    assert body(answer) == "pod"
    assert f"RAW {req.encode().hex()} peer={xworld.client.address}:" in log, log


# Run in the client pod: argv host port n; n connections at once, each sends one
# "Connection: close" request for /burst-I, then all answers are read.
BURST_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = [socket.create_connection((host, port), timeout=20) for _ in range(n)]
for i, c in enumerate(conns):
    c.sendall(b"GET /burst-%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % i)
for c in conns:
    while c.recv(65536):
        pass
print("DONE")
"""


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_mirror_copies_of_a_burst_all_reach_the_program(
    xworld: ExecWorld, programs: dict[str, Path], stream: bool
) -> None:
    # Copies reach the program's listener together (python's http.server listens with a
    # backlog of 5): none may be lost, whatever the program's backlog.
    n = 64
    run = xworld.start(server_argv("python", programs, xworld.tmp), mirror(), stream)
    try:
        run.wait_subscribed("mirror")
        argv = ["python3", "-c", BURST_CLIENT, xworld.target.address, str(PORT), str(n)]
        done = xworld.client.run(argv, timeout=60)
        assert done.returncode == 0, done.stderr
        paths = {f"/burst-{i}" for i in range(n)}

        def served() -> set[str]:
            # The path alone (each word is written whole): the server's threads print
            # their words apart, so another thread's line may come on either side.
            return set(re.findall(r"(/burst-\d+)(?!\d)", run.log()))

        # Generous: a lost copy never comes, a late one (a retransmitted SYN) still counts.
        wait_until(lambda: served() == paths, timeout=30.0)
        got = served()
    finally:
        run.stop()
    assert sorted(paths - got) == [], run.log()
    # accept and getsockname gave every copy the real peer and the pod-side address.
    assert "peer=127.0.0.1" not in run.log() and "local=127.0.0.1" not in run.log()


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_header_filter_on_one_keepalive_connection(
    xworld: ExecWorld, programs: dict[str, Path], stream: bool
) -> None:
    before = len(xworld.pod_requests())
    config = steal(http_filter={"header_filter": "x-user: me"})
    run = xworld.start(server_argv("go", programs, xworld.tmp), config, stream)
    try:
        run.wait_subscribed("steal")
        me = {"x-user": "me"}
        reqs = [request("/a"), request("/b", me), request("/c"), request("/d", me)]
        answers = send_requests(xworld.client, xworld.target.address, PORT, reqs)
        log = run.wait_log("/d")
    finally:
        run.stop()
    assert [body(a) for a in answers] == ["pod", "local", "pod", "local"]
    assert xworld.pod_requests()[before:] == ["REQ GET /a -", "REQ GET /c -"]
    assert re.findall(r"REQ GET (/\w) me", log) == ["/b", "/d"]


def test_port_mapping(xworld: ExecWorld, programs: dict[str, Path]) -> None:
    # The program listens on 9090; the pod's 8080 is what it takes.
    config = steal(port_mapping=[[9090, PORT]])
    run = xworld.start(server_argv("python", programs, xworld.tmp, port=9090), config)
    try:
        run.wait_subscribed("steal", PORT)
        answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/pm")])
        assert [body(a) for a in answers] == ["local"]
    finally:
        run.stop()


def test_listen_ports(xworld: ExecWorld, programs: dict[str, Path]) -> None:
    # 8080 is requested, 18080 used locally; getsockname still says 8080.
    config = steal(listen_ports=[[PORT, 18080]])
    run = xworld.start(server_argv("python", programs, xworld.tmp), config)
    try:
        run.wait_subscribed("steal")
        log = run.wait_log("LISTENING")
        answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/lp")])
        assert [body(a) for a in answers] == ["local"]
        with socket.create_connection(("127.0.0.1", 18080), timeout=5) as s:
            s.sendall(request("/direct").encode())
            got = b""
            # The server writes its headers and body separately: they may come apart.
            while not got.endswith(b"local") and (chunk := s.recv(4096)):
                got += chunk
            assert got.endswith(b"local")
    finally:
        run.stop()
    assert f"LISTENING ('0.0.0.0', {PORT})" in log, log


def test_local_port_already_taken(xworld: ExecWorld, programs: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", PORT))
        taken.listen(1)
        run = xworld.start(server_argv("python", programs, xworld.tmp), steal())
        try:
            run.wait_subscribed("steal")
            log = run.wait_log("LISTENING")
            answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/t")])
            assert [body(a) for a in answers] == ["local"]
        finally:
            run.stop()
    assert f"LISTENING ('0.0.0.0', {PORT})" in log, log  # another local port, still "8080"


def test_sigkill_of_mirrord_leaves_no_rules(xworld: ExecWorld, programs: dict[str, Path]) -> None:
    run = xworld.start(server_argv("python", programs, xworld.tmp), steal())
    try:
        run.wait_subscribed("steal")
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        wait_until(lambda: mirrord_rules(xworld.target) == [])
    finally:
        run.kill()
    # and the pod's own server answers again
    answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/after")])
    assert [body(a) for a in answers] == ["pod"]


def _agent_of(pid: int) -> int:
    """The local agent mirrord started (a child running mirrord.agent)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"agent" in cmdline:
            return int(child)
    raise AssertionError(f"no agent among {children}")


def test_sigkill_of_the_agent_gives_the_pod_its_traffic_back(
    xworld: ExecWorld, programs: dict[str, Path]
) -> None:
    """#12: the dead agent's REDIRECT rules sent the pod's clients to a dead listener until
    a later session: its watchdog removes them within a few seconds."""
    run = xworld.start(server_argv("python", programs, xworld.tmp), steal())
    try:
        run.wait_subscribed("steal")
        os.kill(_agent_of(run.proc.pid), signal.SIGKILL)
        wait_until(lambda: mirrord_rules(xworld.target) == [], timeout=5)
        assert mirrord_rules(xworld.target) == []
        answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/back")])
        assert [body(a) for a in answers] == ["pod"]
        assert run.proc.wait(15) != 0  # mirrord notices the lost agent and stops
    finally:
        run.kill()
    # Told once, in one line, with no traceback (#12: three times, and a task's traceback).
    said = [line for line in run.log().splitlines() if "agent" in line]
    assert len(said) == 1 and "lost the agent" in said[0], run.log()
    assert "Traceback" not in run.log() and "never retrieved" not in run.log(), run.log()


def test_a_mirror_whose_agent_dies_never_stood_in_the_pods_way(
    xworld: ExecWorld, programs: dict[str, Path]
) -> None:
    """A mirror reads copies of the packets: with its agent SIGKILLed, the pod's clients
    are answered at once (a redirecting mirror sent them to a dead listener until the
    watchdog removed its rules)."""
    run = xworld.start(server_argv("python", programs, xworld.tmp), mirror())
    try:
        run.wait_subscribed("mirror")
        os.kill(_agent_of(run.proc.pid), signal.SIGKILL)
        answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/now")])
        assert [body(a) for a in answers] == ["pod"]
        assert run.proc.wait(15) != 0  # mirrord notices the lost agent and stops
    finally:
        run.kill()
    assert mirrord_rules(xworld.target) == []  # a mirror-only session made none


def test_program_close_is_not_needed_for_cleanup(xworld: ExecWorld) -> None:
    # A program that exits on its own: the session's end removes the rules.
    code = (
        "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(1);"
        "print('LISTENING', s.getsockname(), flush=True); time.sleep(1)"
    )
    run = xworld.start(["/usr/bin/python3", "-c", code], mirror())
    try:
        run.wait_subscribed("mirror")
        assert run.proc.wait(30) == 0
    finally:
        run.kill()
    assert mirrord_rules(xworld.target) == []


PY = "/usr/bin/python3"
PEER_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("POD", self.path, "peer=%s" % self.client_address[0], flush=True)
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"pod")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@pytest.mark.parametrize(
    "agent_env", [{}, {"MIRRORD_MIRROR_REDIRECT": "1"}], ids=["sniff", "redirect"]
)
def test_a_mirror_leaves_the_pods_connections_alone(
    xworld: ExecWorld, programs: dict[str, Path], tmp_path: Path, agent_env: dict[str, str]
) -> None:
    """A mirror reads copies of the packets: the pod's server talks to the real client (its
    peer is the client's address, not the agent's), no redirect is put in the pod, and the
    program still gets every request. MIRRORD_MIRROR_REDIRECT=1 (the agent's, here the
    local agent inherits it) is the redirect-and-relay path meshes use."""
    port = 8083
    pod_log = tmp_path / "pod.log"
    with pod_log.open("wb") as out:
        server = xworld.target.spawn([PY, "-c", PEER_SERVER, str(port)], stdout=out)
    try:
        xworld.target.wait_listening(port)
        argv = server_argv("python", programs, xworld.tmp, port=port)
        run = xworld.start(argv, mirror(), env=agent_env)
        try:
            run.wait_subscribed("mirror", port)
            sniffing = mirrord_rules(xworld.target) == []  # not even the session's chains
            answers = send_requests(xworld.client, xworld.target.address, port, [request("/p")])
            log = run.wait_log("/p")
        finally:
            run.stop()
    finally:
        server.kill()
    assert [body(a) for a in answers] == ["pod"]
    assert "REQ GET /p" in log, log  # the copy
    peers = re.findall(r"POD /p peer=(\S+)", pod_log.read_text())
    if agent_env:
        assert not sniffing and peers != [xworld.client.address]  # the agent relayed it
    else:
        assert sniffing and peers == [xworld.client.address]


@pytest.mark.parametrize("ignore", [False, True], ids=["copied", "ignore_localhost"])
def test_a_mirror_copies_the_pods_own_loopback_connections(
    xworld: ExecWorld, programs: dict[str, Path], ignore: bool
) -> None:
    """Connections the pod makes to its own port over loopback are copied as upstream's
    are (the packets show twice on lo: the sent ones are skipped), unless
    ignore_localhost."""
    run = xworld.start(server_argv("python", programs, xworld.tmp), mirror(ignore_localhost=ignore))
    try:
        run.wait_subscribed("mirror")
        inside = [request("/lo-a"), request("/lo-b")]
        answers = send_requests(xworld.target, "127.0.0.1", PORT, inside)
        assert [body(a) for a in answers] == ["pod", "pod"]
        later = send_requests(xworld.client, xworld.target.address, PORT, [request("/out")])
        assert [body(a) for a in later] == ["pod"]
        log = run.wait_log("/out")  # sent after the loopback ones, which came by now
        if not ignore:
            log = run.wait_log("/lo-b")
    finally:
        run.stop()
    copied = sorted(re.findall(r"REQ GET (/[\w-]+)", log))
    assert copied == (["/out"] if ignore else ["/lo-a", "/lo-b", "/out"]), log


SINK_SERVER = """
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print("POST", self.path, len(body), hashlib.sha256(body).hexdigest(), flush=True)
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

BIG_POST_CLIENT = """
import hashlib, os, socket, sys
body = os.urandom(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(b"POST /big HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
answer = b""
while not answer.endswith(b"ok"):
    answer += c.recv(65536)
print(hashlib.sha256(body).hexdigest())
"""


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_a_mirrored_body_of_megabytes_arrives_whole(
    xworld: ExecWorld, tmp_path: Path, stream: bool
) -> None:
    """Sniffed copies come a segment at a time, far more pieces than a relay's reads: a
    4 MiB body must still reach the program whole and in order."""
    port, size = 8084, 4 << 20
    with (tmp_path / "pod.log").open("wb") as out:
        server = xworld.target.spawn([PY, "-c", SINK_SERVER, str(port)], stdout=out)
    try:
        xworld.target.wait_listening(port)
        run = xworld.start([PY, "-c", SINK_SERVER, str(port)], mirror(), stream)
        try:
            run.wait_subscribed("mirror", port)
            argv = ["python3", "-c", BIG_POST_CLIENT, xworld.target.address, str(port), str(size)]
            done = xworld.client.run(argv, timeout=60)
            assert done.returncode == 0, done.stderr
            digest = done.stdout.decode().strip()
            log = run.wait_log(digest, timeout=30)
        finally:
            run.stop()
    finally:
        server.kill()
    assert f"POST /big {size} {digest}" in (tmp_path / "pod.log").read_text()
    assert f"POST /big {size} {digest}" in log, log


@pytest.mark.parametrize("second", ["steal", "mirror"])
def test_a_port_another_session_steals(
    xworld: ExecWorld, programs: dict[str, Path], second: str
) -> None:
    first = xworld.start(server_argv("python", programs, xworld.tmp), steal())
    try:
        first.wait_subscribed("steal")
        config = steal() if second == "steal" else {"feature": {"network": {"incoming": "mirror"}}}
        other = xworld.start(server_argv("python", programs, xworld.tmp), config)
        try:
            if second == "steal":
                # on_concurrent_steal defaults to abort: the program's listen fails.
                assert other.proc.wait(30) != 0
                assert "already taken" in other.log()
                assert "Address already in use" in other.log()
            else:
                # A mirror reads copies of the packets: beside a steal, it copies what the
                # steal takes (before, it could not have the port: a local listener only).
                other.wait_subscribed("mirror")
                assert other.proc.poll() is None
            answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/c")])
            assert [body(a) for a in answers] == ["local"]  # still the first session's
            if second == "mirror":
                assert "GET /c" in other.wait_log("GET /c"), other.log()
                assert "listening locally only" not in other.log()
        finally:
            other.stop()
    finally:
        first.stop()


def test_h2_header_filter_per_stream_under_exec(xworld: ExecWorld) -> None:
    # An HTTP/2 (prior knowledge) server of the pod on another port; the local program is
    # Node's http2 server under mirrord exec; one client connection, concurrent streams.
    h2_port = 8082
    xworld.target.spawn(["node", "-e", NODE_H2_SERVER, str(h2_port), "pod"])
    xworld.target.wait_listening(h2_port)
    config = steal(http_filter={"header_filter": "^x-user: me$", "ports": [h2_port]})
    run = xworld.start(["node", "-e", NODE_H2_SERVER, str(h2_port), "local"], config)
    me = {"x-user": "me"}
    reqs: list[object] = [["/a", {}, 0], ["/b", me, 70_000], ["/c", {}, 5], ["/d", me, 0]]
    try:
        run.wait_subscribed("steal", h2_port)
        answers = node_client(xworld.client, xworld.target.address, h2_port, reqs)
        log = run.wait_log("REQ /d")
    finally:
        run.stop()
    assert [(a["from"], a["body"], a["trailers"]) for a in answers] == [
        ("pod", "pod:/a:-:0", "pod"),
        ("local", "local:/b:me:70000", "local"),
        ("pod", "pod:/c:-:5", "pod"),
        ("local", "local:/d:me:0", "local"),
    ]
    assert sorted(re.findall(r"REQ (/\w) me", log)) == ["/b", "/d"]


HOLDING_SERVER = """
import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("LISTENING", s.getsockname(), flush=True)
c, peer = s.accept()
print("ACCEPTED", os.getpid(), "peer=%s:%d" % peer, flush=True)
while c.recv(65536):
    pass
"""

HOLDING_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"hello")
time.sleep(30)
"""


@pytest.mark.parametrize("path", ["handoff", "relay", "stream"])
def test_who_delivers_a_stolen_connection(xworld: ExecWorld, path: str) -> None:
    """With the agent on this machine and the notify engine, the program's accepted
    connection is the peer's own (handed over: its socket in the target's netns, nobody
    in between); relayed (MIRRORD_NO_HANDOFF=1), it comes from the agent itself; with
    MIRRORD_NO_DIRECT=1, from mirrord."""
    env = {"MIRRORD_NO_HANDOFF": "1"} if path == "relay" else {}
    argv = ["/usr/bin/python3", "-c", HOLDING_SERVER, str(PORT)]
    run = xworld.start(argv, steal(), path == "stream", env=env)
    client = None
    try:
        run.wait_subscribed("steal")
        client = xworld.client.spawn(
            ["python3", "-c", HOLDING_CLIENT, xworld.target.address, str(PORT)]
        )
        found = re.search(r"ACCEPTED (\d+) peer=(\S+)", run.wait_log("ACCEPTED"))
        assert found is not None, run.log()
        program = int(found.group(1))
        assert found.group(2).startswith(f"{xworld.client.address}:")  # the real peer
        in_pod = xworld.target.run(["ss", "-Htnp", "state", "established"]).stdout.decode()
        held = [line for line in in_pod.splitlines() if f"pid={program}," in line]
        if path == "handoff":
            assert len(held) == 1 and f"{xworld.client.address}]:" in held[0], in_pod
        else:
            assert held == [], in_pod
            relays = other_end_owners(program)
            assert relays == {run.proc.pid if path == "stream" else agent_of(run.proc.pid)}
    finally:
        if client is not None:
            client.kill()
        run.stop()


# An IPv4 listener (the agent's is dual-stack: a handed-over connection is an AF_INET6
# socket): what the program learns of its connection, then an echo.
INET_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("LISTENING", flush=True)
c, peer = s.accept()
print("ACCEPTED", repr((peer, c.getpeername(), c.getsockname(), c.getblocking())), flush=True)
while data := c.recv(65536):
    c.sendall(data.upper())
"""

ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
for word in (b"ping", b"pong"):  # one connection, two exchanges
    c.sendall(word)
    print(c.recv(16).decode(), flush=True)
"""


def test_a_handed_over_connection_looks_native_to_an_ipv4_program(xworld: ExecWorld) -> None:
    """accept, getpeername and getsockname answer in the listener's family (AF_INET: a
    pair, not the v4-mapped IPv6 quadruple of the agent's socket), the pod side as the
    local address, the socket blocking as accept() made it; bytes go both ways."""
    run = xworld.start(["/usr/bin/python3", "-c", INET_SERVER, str(PORT)], steal())
    try:
        run.wait_subscribed("steal")
        argv = ["python3", "-c", ECHO_CLIENT, xworld.target.address, str(PORT)]
        done = xworld.client.run(argv, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().split() == ["PING", "PONG"]
        found = re.search(r"ACCEPTED (.*)", run.wait_log("ACCEPTED"))
        assert found is not None, run.log()
    finally:
        run.stop()
    peer, peername, sockname, blocking = ast.literal_eval(found.group(1))
    assert peer == peername and peer[0] == xworld.client.address and len(peer) == 2
    assert sockname == (xworld.target.address, PORT)
    assert blocking is True


NEVER_ACCEPTING = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("LISTENING", flush=True)
time.sleep(60)
"""

WAITING_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(b"anyone?")
try:
    print("EOF" if c.recv(16) == b"" else "DATA", flush=True)
except ConnectionResetError:
    print("RESET", flush=True)
"""


def test_connections_the_program_never_accepted_are_refused_at_the_end(
    xworld: ExecWorld,
) -> None:
    """Handed over, then never accepted: when the session ends their peers are reset,
    not left waiting for an answer nobody holds."""
    run = xworld.start(["/usr/bin/python3", "-c", NEVER_ACCEPTING, str(PORT)], steal())
    try:
        run.wait_subscribed("steal")
        argv = ["python3", "-c", WAITING_CLIENT, xworld.target.address, str(PORT)]
        client = xworld.client.spawn(argv, stdout=subprocess.PIPE)
        time.sleep(0.5)  # connected and handed over: the agent holds nothing of it
        assert client.poll() is None
    finally:
        run.stop()
    out, _ = client.communicate(timeout=20)
    assert out.decode().strip() in ("RESET", "EOF")


HALF_CLOSING_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(sys.argv[3].encode())
c.shutdown(socket.SHUT_WR)  # the request and its end at once, before any answer
answer = b""
while chunk := c.recv(65536):
    answer += chunk
print(answer.decode())
"""


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_steal_of_a_request_sent_with_its_end(
    xworld: ExecWorld, programs: dict[str, Path], stream: bool
) -> None:
    # The peer's bytes and EOF may come before the program's side is connected: both must
    # reach the program, in order, and its answer the peer.
    req = request("/half-closed")
    run = xworld.start(server_argv("raw", programs, xworld.tmp), steal(), stream)
    try:
        run.wait_subscribed("steal")
        argv = ["python3", "-c", HALF_CLOSING_CLIENT, xworld.target.address, str(PORT), req]
        done = xworld.client.run(argv, timeout=30)
        log = run.wait_log("RAW ")
    finally:
        run.stop()
    assert done.returncode == 0, done.stderr
    assert body(done.stdout.decode()).strip() == "local"
    assert f"RAW {req.encode().hex()} peer={xworld.client.address}:" in log, log


BULK_SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("LISTENING", s.getsockname(), flush=True)
block = bytes(range(256)) * 4096  # 1 MiB
while True:
    c, _ = s.accept()
    got = b""
    while b"\\r\\n\\r\\n" not in got or len(got.split(b"\\r\\n\\r\\n", 1)[1]) < 1 << 16:
        got += c.recv(1 << 16)
    upload = got.split(b"\\r\\n\\r\\n", 1)[1]  # the 64 KiB the client sent after its head
    print("UPLOAD", hashlib.sha256(upload).hexdigest(), flush=True)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % (32 << 20))
    for _ in range(32):
        c.sendall(block)
    c.close()
"""

# What BULK_SERVER answers: a head and 32 MiB.
BULK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (32 << 20) + (
    bytes(range(256)) * 4096 * 32
)

SLOW_READER = """
import hashlib, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"GET /bulk HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n" + bytes(range(256)) * 256)
h, n = hashlib.sha256(), 0
time.sleep(1)  # let every buffer on the way fill up: flow control must hold the rest
while chunk := c.recv(1 << 20):
    n += len(chunk)
    h.update(chunk)
print(n, h.hexdigest())
"""


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_steal_bulk_both_ways_with_a_slow_reader(xworld: ExecWorld, stream: bool) -> None:
    run = xworld.start(["/usr/bin/python3", "-c", BULK_SERVER, str(PORT)], steal(), stream)
    try:
        run.wait_subscribed("steal")
        argv = ["python3", "-c", SLOW_READER, xworld.target.address, str(PORT)]
        done = xworld.client.run(argv, timeout=60)
        log = run.wait_log("UPLOAD ")
    finally:
        run.stop()
    assert done.returncode == 0, done.stderr
    _check_bulk(done.stdout, log)


def _check_bulk(reader_out: bytes, server_log: str) -> None:
    """The reader got BULK_SERVER's whole answer, and the server the whole upload."""
    import hashlib

    n, digest = reader_out.decode().split()
    assert int(n) == len(BULK_ANSWER)
    assert digest == hashlib.sha256(BULK_ANSWER).hexdigest()
    assert f"UPLOAD {hashlib.sha256(bytes(range(256)) * 256).hexdigest()}" in server_log


# The same through a header filter: a plain POST (Content-Length, 64 KiB), so the agent's
# HTTP/1.1 fast path carries it and pulls the program's answer itself; the connection
# stays open after the answer, so the reader stops at the answer's length.
SLOW_FILTERED_READER = """
import hashlib, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"POST /bulk HTTP/1.1\\r\\nHost: t\\r\\nX-User: me\\r\\nContent-Length: 65536\\r\\n\\r\\n"
          + bytes(range(256)) * 256)
h, n, want = hashlib.sha256(), 0, int(sys.argv[3])
time.sleep(1)  # let every buffer on the way fill up: flow control must hold the rest
while n < want and (chunk := c.recv(1 << 20)):
    n += len(chunk)
    h.update(chunk)
print(n, h.hexdigest())
"""


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_filtered_steal_bulk_to_a_slow_reader(xworld: ExecWorld, stream: bool) -> None:
    config = steal(http_filter={"header_filter": "x-user: me"})
    run = xworld.start(["/usr/bin/python3", "-c", BULK_SERVER, str(PORT)], config, stream)
    try:
        run.wait_subscribed("steal")
        want = str(len(BULK_ANSWER))
        argv = ["python3", "-c", SLOW_FILTERED_READER, xworld.target.address, str(PORT), want]
        done = xworld.client.run(argv, timeout=60)
        log = run.wait_log("UPLOAD ")
    finally:
        run.stop()
    assert done.returncode == 0, done.stderr
    _check_bulk(done.stdout, log)


UNIX_SERVER = r"""
import os, socket, tempfile, threading
path = os.path.join(tempfile.mkdtemp(), "s")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen()
def client():
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    c.sendall(b"ping")
    c.close()
threading.Thread(target=client).start()
conn, _ = srv.accept()
print("unix", conn.recv(10).decode(), flush=True)
"""


def test_a_unix_socket_server_is_not_incomings_business(xworld: ExecWorld) -> None:
    """Only AF_INET/AF_INET6 listeners take the target's traffic; a unix stream server
    (asyncio's, socketserver's…) under the default config works as natively."""
    run = xworld.start(["/usr/bin/python3", "-c", UNIX_SERVER], {})
    try:
        assert run.proc.wait(30) == 0, run.log()
    finally:
        run.kill()
    assert run.log().strip().splitlines()[-1] == "unix ping", run.log()


# A program that sends one UDP datagram into the pod's network (a DNS lookup does the same:
# a UDP flow in the agent whose receive is pending) and then serves.
UDP_THEN_SERVE = (
    """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"hello", (sys.argv[2], 9))
"""
    + PY_SERVER
)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_sigkill_of_mirrord_after_udp_ends_the_agent_and_its_rules(xworld: ExecWorld) -> None:
    """#12: with a UDP flow open, the orphaned agent never exited and its chains stayed."""
    argv = ["/usr/bin/python3", "-c", UDP_THEN_SERVE, str(PORT), xworld.client.address]
    run = xworld.start(argv, steal())
    try:
        run.wait_subscribed("steal")
        agent = agent_of(run.proc.pid)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        wait_until(lambda: _gone(agent), timeout=5)
        assert _gone(agent)
        wait_until(lambda: mirrord_rules(xworld.target) == [], timeout=5)
        assert mirrord_rules(xworld.target) == []
    finally:
        run.kill()
    answers = send_requests(xworld.client, xworld.target.address, PORT, [request("/after")])
    assert [body(a) for a in answers] == ["pod"]


DOUBLE_BIND = """
import socket, sys
def bind(port, reuseport=False):
    s = socket.socket()
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind(("0.0.0.0", port))
        return s, "bound %d" % s.getsockname()[1]
    except OSError as e:
        return s, "errno %d" % e.errno
for port in map(int, sys.argv[1:]):
    a, first = bind(port)
    b, second = bind(port)
    c, third = bind(port + 1, reuseport=True)
    d, fourth = bind(port + 1, reuseport=True)
    print(port, first, second, third, fourth, flush=True)
"""


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_a_second_bind_of_the_programs_own_port_is_refused(xworld: ExecWorld, engine: str) -> None:
    """#12: binding the same port twice succeeded (the second moved to a free port, as for
    a port busy on this machine); natively EADDRINUSE. SO_REUSEPORT pairs still share
    their port, also when it was moved off a busy one."""
    with socket.socket() as busy, socket.socket() as busy_next:
        busy.bind(("0.0.0.0", 0))  # a port taken on this machine, not by the program
        taken = busy.getsockname()[1]
        with contextlib.suppress(OSError):
            busy_next.bind(("0.0.0.0", taken + 1))
        free = _free_pair()
        argv = ["/usr/bin/python3", "-c", DOUBLE_BIND, str(free), str(taken)]
        run = xworld.start(argv, mirror(), engine=engine)
        try:
            assert run.wait() == 0, run.log()
        finally:
            run.kill()
    lines = {int(line.split()[0]): line.split(" ", 1)[1] for line in run.log().splitlines()
             if line[:1].isdigit()}  # fmt: skip
    assert lines[free] == f"bound {free} errno 98 bound {free + 1} bound {free + 1}", run.log()
    # Moved off the busy ports, still: the second plain bind refused, the pair together.
    assert lines[taken] == f"bound {taken} errno 98 bound {taken + 1} bound {taken + 1}", run.log()


def _free_pair() -> int:
    """A port P with P and P+1 free on this machine."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("0.0.0.0", port))
                b.bind(("0.0.0.0", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two free ports in a row")


BIND_OWN_EPHEMERAL = """
import errno, socket
first = socket.socket(); first.bind(("127.0.0.1", 0)); first.listen(1)
port = first.getsockname()[1]
second = socket.socket(); second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    second.bind(("127.0.0.1", port)); print("bound", second.getsockname()[1])
except OSError as e:
    print("errno", e.errno)
client = socket.socket()
try:
    client.bind(("127.0.0.1", port)); print("bound", client.getsockname()[1])
except OSError as e:
    print("errno", e.errno)
"""


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_a_bind_to_a_port_the_kernel_gave_the_program_is_refused(
    xworld: ExecWorld, engine: str
) -> None:
    """CPython's test_asyncio (create_server / create_connection local_addr "in use"): a
    port the program got by binding port 0 was taken for a port busy on this machine,
    and a second bind to it was moved to a free port; natively EADDRINUSE."""
    argv = ["/usr/bin/python3", "-c", BIND_OWN_EPHEMERAL]
    native = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert native.stdout.split() == ["errno", "98", "errno", "98"], native
    run = xworld.start(argv, mirror(), engine=engine)
    try:
        assert run.wait() == 0, run.log()
    finally:
        run.kill()
    assert [line for line in run.log().splitlines() if line.startswith(("errno", "bound"))] == [
        "errno 98",
        "errno 98",
    ], run.log()


@pytest.mark.parametrize("kind", ["python", "go"])
@pytest.mark.parametrize("mode", ["steal", "mirror"])
def test_the_node_and_another_pod_both_reach_the_program(
    xworld: ExecWorld, programs: dict[str, Path], kind: str, mode: str
) -> None:
    """#13: a request from the host (the node, the pods' gateway) was answered by the pod,
    silently: node sources were skipped. A pid target has no probes: nothing is skipped."""
    path = f"/{mode}-{kind}-from"
    run = xworld.start(
        server_argv(kind, programs, xworld.tmp), steal() if mode == "steal" else mirror()
    )
    try:
        run.wait_subscribed(mode)
        for who, sender in (("node", None), ("pod", xworld.client)):
            req = request(f"{path}-{who}", {"Connection": "close"})
            answer = (
                send_requests_from_host(xworld.target.address, PORT, [req])
                if sender is None
                else send_requests(sender, xworld.target.address, PORT, [req])
            )
            assert body(answer[0]) == ("local" if mode == "steal" else "pod"), answer
            run.wait_log(f"{path}-{who}")  # the program got it (mirror: a copy)
        log = run.log()
    finally:
        run.stop()
    gateway = xworld.client.address.rsplit(".", 1)[0] + ".1"  # the bridge: the host's side
    assert gateway in log, log  # the program saw the node's own address as the peer
    assert xworld.client.address in log, log
