"""The localhost rule, ignore_localhost, filter.local/remote (checked by where the
connection arrives), port-forward end to end, and the agent going away mid-connection."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from tests.features.outgoing.net_world import MIRRORD, World, agent_of, relay_env

PY = "/usr/bin/python3"
POD_LO_PORT = 18081


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.fixture(scope="module")
def local_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 answering "local"."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"local")

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", POD_LO_PORT), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield POD_LO_PORT
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def pod_loopback_server(world: World) -> Iterator[None]:
    """The same port on the target pod's own loopback, answering "pod-loopback"."""
    from mirrord.testpod.pod import http_server_argv

    argv = http_server_argv(POD_LO_PORT, body="pod-loopback")
    proc = world.target.spawn(argv)
    world.target.wait_listening(POD_LO_PORT)
    yield
    proc.kill()
    proc.wait()


def fetch(port: int) -> list[str]:
    return ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{port}/"]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "pod-loopback"),
        ('{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}', "local"),
        ('{"feature": {"network": {"outgoing": {"filter": {"local": ["127.0.0.1:%d"]}}}}}',
         "local"),
        ('{"feature": {"network": {"outgoing": {"filter": {"remote": ["tcp://127.0.0.0/8"]}}}}}',
         "pod-loopback"),
        ('{"feature": {"network": {"outgoing": {"filter": {"remote": [":1"]}}}}}', "local"),
        ('{"feature": {"network": {"outgoing": {"tcp": false}}}}', "local"),
    ],
    ids=["default", "ignore_localhost", "filter-local", "filter-remote-match",
         "filter-remote-other", "tcp-false"],
)  # fmt: skip
def test_where_localhost_goes(
    world: World,
    local_server: int,
    pod_loopback_server: None,
    config: str | None,
    expected: str,
) -> None:
    if config is not None and "%d" in config:
        config = config % local_server
    r = world.mirrord(fetch(local_server), config=config)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected


def test_program_own_listener_stays_local(world: World) -> None:
    # The program listens on a port the pod's loopback also serves: it reaches itself.
    from mirrord.testpod.pod import http_server_argv

    port = POD_LO_PORT + 1
    proc = world.target.spawn(http_server_argv(port, body="pod-loopback"))
    try:
        world.target.wait_listening(port)
        r = world.mirrord(
            py(f"""
            import socket
            srv = socket.create_server(('127.0.0.1', {port}))
            c = socket.create_connection(('127.0.0.1', {port}))
            conn, _ = srv.accept(); conn.sendall(b'myself'); print(c.recv(10).decode())
        """)
        )
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "myself"


def test_filter_local_keeps_the_service_local(world: World) -> None:
    # The host cannot reach the service pod: kept local, the connection fails.
    cfg = '{"feature": {"network": {"outgoing": {"filter": {"local": ["%s"]}}}}}'
    r = world.mirrord(
        ["curl", "-sS", "-m", "2", f"http://{world.service.address}:8080/"],
        config=cfg % world.service.address,
    )
    assert r.returncode != 0 and "service" not in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_forward(world: World) -> None:
    lport = _free_port()
    proc = subprocess.Popen(
        [MIRRORD, "port-forward", "--target", f"pid/{world.target.main_pid}",
         "-L", f"{lport}:svc.pod.internal:8080"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "forwarding" in line, line
        out = subprocess.run(
            ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{lport}/"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert out.stdout == "service", out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_agent_gone_mid_connection(world: World, tmp_path: object, stream: bool) -> None:
    code = f"""
        import signal, socket, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # mirrord stops us after the loss
        s = socket.create_connection(('{world.service.address}', 6379))
        print('ready', flush=True)
        sys.stdin.readline()
        try:
            s.sendall(b'PING\\r\\n'); print('got', s.recv(100), flush=True)
        except OSError as e:
            print('errno', e.errno, flush=True)
    """
    args = [MIRRORD, "exec", "--target", f"pid/{world.target.main_pid}", "--", *py(code)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=relay_env(stream),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(agent_of(proc.pid), signal.SIGKILL)
        time.sleep(0.5)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline().strip()
        assert line in ("errno 104", "errno 32", "got b''"), line  # ECONNRESET / EPIPE
        assert line != "got b''", "the program saw a clean close, not a reset"
    finally:
        proc.kill()
        proc.wait(timeout=10)
