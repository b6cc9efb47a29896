"""`mirrord port-forward` with a local target (pid/N, a local agent): -R steals or mirrors
the target's port to a server on this machine's loopback, and the agent's rules go with
Ctrl-C; -L and -R together; the agent's loss mid-session is a message and exit status 1.

Real parts only: the CLI, a local agent, a target pod (network namespace) with its own HTTP
server, a client pod that sends the requests, a local HTTP server in this process."""

from __future__ import annotations

import http.server
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod
from tests.features.incoming.incoming_helpers import (
    LOGGING_SERVER,
    mirrord_rules,
    request,
    send_requests,
    wait_until,
)
from tests.features.outgoing.net_world import agent_of
from tests.portforward.test_cli import PortForward, free_port

pytestmark = pytest.mark.root

PY = "/usr/bin/python3"
STEAL = '{"feature": {"network": {"incoming": "steal"}}}'


class LocalServer:
    """An HTTP/1.1 server on this machine's 127.0.0.1 answering `body`; `seen` holds the
    path and x-user header of each request it got."""

    def __init__(self, body: bytes = b"local") -> None:
        self.seen: list[tuple[str, str]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("x-user", "-")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture
def target(network: Network) -> Pod:
    return network.add_pod("target", argv=[PY, "-c", LOGGING_SERVER, "8080"], wait_port=8080)


@pytest.fixture
def client_pod(network: Network) -> Pod:
    return network.add_pod("client", argv=["/bin/sleep", "600"])


def body(answer: str) -> str:
    return answer.partition("\r\n\r\n")[2]


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mirrord.json"
    path.write_text(text)
    return str(path)


def test_reverse_steal_delivers_to_the_local_server(
    target: Pod, client_pod: Pod, local_server: LocalServer, tmp_path: Path
) -> None:
    pf = PortForward(["-t", f"pid/{target.main_pid}", "-f", config_file(tmp_path, STEAL),
                      "-R", f"8080:{local_server.port}"])  # fmt: skip
    try:
        line = pf.wait_for("port 8080")
        assert line == (
            f"mirrord: stealing port 8080 of the target (pid {target.main_pid}) -> "
            f"127.0.0.1:{local_server.port} (this machine answers)"
        )
        answers = send_requests(
            client_pod, target.address, 8080, [request("/a", {"x-user": "me"}), request("/b")]
        )
        assert [body(a) for a in answers] == ["local", "local"]
        assert local_server.seen == [("/a", "me"), ("/b", "-")]
        assert "REQ" not in target.read_log()  # the pod's server never saw them
        assert mirrord_rules(target) != []
        code = pf.stop(signal.SIGINT)
    finally:
        pf.kill()
    assert code == 0, pf.stderr
    assert "Traceback" not in pf.stderr
    assert mirrord_rules(target) == []  # the agent removed its redirect
    # The pod answers its own traffic again.
    assert [body(a) for a in send_requests(client_pod, target.address, 8080, [request("/c")])] == [
        "pod"
    ]


def test_reverse_mirror_is_the_default(
    target: Pod, client_pod: Pod, local_server: LocalServer
) -> None:
    pf = PortForward(["-t", f"pid/{target.main_pid}", "-R", f"8080:{local_server.port}"])
    try:
        line = pf.wait_for("port 8080")
        assert line.startswith("mirrord: mirroring port 8080 of the target")
        assert line.endswith("(copies; the target still answers)")
        answers = send_requests(client_pod, target.address, 8080, [request("/m", {"x-user": "u"})])
        assert [body(a) for a in answers] == ["pod"]  # the pod's own server answered
        wait_until(lambda: local_server.seen)
        assert local_server.seen == [("/m", "u")]  # and the local server got a copy
        assert "REQ GET /m u" in target.read_log()
        code = pf.stop(signal.SIGTERM)
    finally:
        pf.kill()
    assert code == 0, pf.stderr
    assert mirrord_rules(target) == []


def test_forward_and_reverse_together_and_a_refused_delivery_is_counted(
    target: Pod, client_pod: Pod, tmp_path: Path
) -> None:
    """-L reaches a second server of the pod by the pod's own name for itself (its
    /etc/hosts); -R steals to a local port where nothing listens: the peer's connection
    ends, and mirrord says so once, and counts it at the end."""
    import urllib.request

    from mirrord.testpod.pod import http_server_argv

    target.spawn(http_server_argv(18082, body="pod-second"))
    target.wait_listening(18082)
    lport, nobody = free_port(), free_port()
    pf = PortForward(["-t", f"pid/{target.main_pid}", "-f", config_file(tmp_path, STEAL),
                      "-L", f"{lport}:target:18082", "-R", f"8080:{nobody}"])  # fmt: skip
    try:
        pf.wait_for("stealing port 8080")
        fwd = pf.wait_for("forwarding")
        assert fwd == (
            f"mirrord: forwarding 127.0.0.1:{lport} -> target:18082 from the target's network "
            f"(pid {target.main_pid})"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{lport}/l", timeout=10) as r:
            assert r.read() == b"pod-second"
        done = client_pod.run([PY, "-c", (
            "import socket\n"
            f"s = socket.create_connection(('{target.address}', 8080), timeout=10)\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(repr(s.recv(100)))\n"
        )])  # fmt: skip
        assert done.stdout.decode().strip() == "b''", done  # no answer: closed
        pf.wait_for(f"cannot deliver a connection to 127.0.0.1:{nobody}: Connection refused")
        code = pf.stop()
    finally:
        pf.kill()
    assert code == 0, pf.stderr
    assert f"1 of 1 connections could not be delivered to 127.0.0.1:{nobody}" in pf.stderr


def test_forward_failures_are_said_and_reset_the_local_connection(target: Pod) -> None:
    import socket

    refused, unknown = free_port(), free_port()
    pf = PortForward(["-t", f"pid/{target.main_pid}", "-L", f"{refused}:target:1",
                      "-L", f"{unknown}:no-such-host.invalid:80"])  # fmt: skip
    try:
        pf.wait_for(f"forwarding 127.0.0.1:{unknown}")
        for port in (refused, unknown):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            with s, pytest.raises(ConnectionResetError):
                s.sendall(b"x")
                assert s.recv(10) == b"", "not reset"
        pf.wait_for(f"mirrord: -L {refused}: target:1: Connection refused")
        pf.wait_for(f"mirrord: -L {unknown}: no-such-host.invalid:80: no-such-host.invalid does "
                    "not resolve in the target")  # fmt: skip
        assert pf.proc.poll() is None  # still serving
        code = pf.stop()
    finally:
        pf.kill()
    assert code == 0, pf.stderr


def test_losing_the_agent_ends_the_session_with_a_message(
    target: Pod, local_server: LocalServer
) -> None:
    pf = PortForward(["-t", f"pid/{target.main_pid}", "-R", f"8080:{local_server.port}",
                      "-L", f"{free_port()}:127.0.0.1:8080"])  # fmt: skip
    try:
        pf.wait_for("mirroring port 8080")
        os.kill(agent_of(pf.proc.pid), signal.SIGKILL)
        code = pf.wait(timeout=30)
    finally:
        pf.kill()
    assert code == 1, pf.stderr
    assert "mirrord: lost the agent: " in pf.stderr
    assert "Traceback" not in pf.stderr


def test_a_port_stolen_by_another_session_is_refused(
    target: Pod, local_server: LocalServer, tmp_path: Path
) -> None:
    cfg = config_file(tmp_path, STEAL)
    first = PortForward(
        ["-t", f"pid/{target.main_pid}", "-f", cfg, "-R", f"8080:{local_server.port}"]
    )
    try:
        first.wait_for("stealing port 8080")
        second = PortForward(["-t", f"pid/{target.main_pid}", "-f", cfg, "-R", "8080:9"])
        try:
            code = second.wait(timeout=60)
        finally:
            second.kill()
        assert code == 1, second.stderr
        assert "-R 8080:9: port 8080 of the target is taken" in second.stderr
        assert "Traceback" not in second.stderr
        assert mirrord_rules(target) != []  # the first session's steal stays
        assert first.stop() == 0
    finally:
        first.kill()
    assert mirrord_rules(target) == []
