"""The world of the `mirrord exec` incoming-traffic tests: a target pod whose server on
8080 answers "pod" and logs each request, a client pod, and local servers run under
`mirrord exec --target pid/N` (the real CLI, a local agent, real iptables in the pod).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from mirrord.testpod import Network, Pod
from tests.features.incoming.incoming_helpers import LOGGING_SERVER, mirrord_rules, packet_sockets

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PORT = 8080

# python3's http.server, answering "local" and logging what accept/getsockname gave.
PY_SERVER = """
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        peer = "%s:%d" % self.client_address[:2]
        local = "%s:%d" % self.connection.getsockname()[:2]
        print("REQ", self.command, self.path, self.headers.get("x-user", "-"),
              "peer=" + peer, "local=" + local, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"local")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H)
print("LISTENING", srv.socket.getsockname(), flush=True)
srv.serve_forever()
"""

NODE_SERVER = """
const port = Number(process.argv[1]);
const srv = require('http').createServer((q, s) => {
  console.log('REQ', q.method, q.url, q.headers['x-user'] || '-',
              'peer=' + q.socket.remoteAddress + ':' + q.socket.remotePort);
  s.setHeader('Content-Length', 5); s.end('local');
});
srv.listen(port, () => console.log('LISTENING', JSON.stringify(srv.address())));
"""

# A raw TCP server: prints the exact bytes it received (hex), answers "local".
RAW_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("LISTENING", s.getsockname(), flush=True)
while True:
    c, peer = s.accept()
    data = b""
    while not data.endswith(b"\\r\\n\\r\\n"):
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    print("RAW", data.hex(), "peer=%s:%d" % peer, flush=True)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nlocal"); c.close()
"""


def server_argv(kind: str, programs: dict[str, Path], www: Path, port: int = PORT) -> list[str]:
    if kind == "python":
        return ["/usr/bin/python3", "-c", PY_SERVER, str(port)]
    if kind == "go":
        return [str(programs["httpserve-go"]), f":{port}"]  # [::], dual stack
    if kind == "busybox":
        return ["busybox", "httpd", "-f", "-vv", "-p", str(port), "-h", str(www)]
    if kind == "node":
        return ["node", "-e", NODE_SERVER, str(port)]
    if kind == "raw":
        return ["/usr/bin/python3", "-c", RAW_SERVER, str(port)]
    raise ValueError(kind)


class HasTarget(Protocol):
    target: Pod


@dataclass
class ExecWorld:
    net: Network
    target: Pod
    client: Pod
    tmp: Path

    def pod_requests(self) -> list[str]:
        return [line for line in self.target.read_log().splitlines() if line.startswith("REQ")]

    def start(
        self,
        argv: list[str],
        config: dict[str, object],
        stream: bool = False,
        engine: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Running:
        """`stream`: connections delivered over the agent's Connection streams, not
        straight from the (local) agent to the program (MIRRORD_NO_DIRECT=1). `engine`:
        MIRRORD_ENGINE for the run. `env`: more of mirrord's environment."""
        packets = packet_sockets(self.target)
        cfg = self.tmp / f"cfg-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps(config))
        out = self.tmp / f"out-{time.monotonic_ns()}.log"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [MIRRORD, "exec", "--target", f"pid/{self.target.main_pid}", "-f", str(cfg),
                 "--", *argv],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.tmp, start_new_session=True,
                env={
                    **os.environ,
                    **({"MIRRORD_NO_DIRECT": "1"} if stream else {}),
                    **({"MIRRORD_ENGINE": engine} if engine else {}),
                    **(env or {}),
                },
            )  # fmt: skip
        return Running(self, proc, out, packets)


@dataclass
class Running:
    world: HasTarget
    proc: subprocess.Popen[bytes]
    out: Path
    packets_before: int = 0  # the target's packet sockets before this run

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_subscribed(self, mode: str, port: int = PORT, timeout: float = 30.0) -> None:
        """Until the agent's rule for the port is in the target's netns, or for a mirror
        one more packet socket there than before the run (that is after the program's
        listen: the subscription is made there)."""
        want = f"mirrord:{mode}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(want in line for line in mirrord_rules(self.world.target)):
                return
            if mode == "mirror" and packet_sockets(self.world.target) > self.packets_before:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {want} rule; mirrord output:\n{self.log()}")

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and needle not in self.log():
            time.sleep(0.05)
        return self.log()

    def wait(self, timeout: float = 60.0) -> int:
        """Until mirrord ends by itself; its exit code (killed if it does not)."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def stop(self) -> int:
        """SIGTERM to mirrord (forwarded to the program); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def xworld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    tmp = tmp_path_factory.mktemp("exec-incoming")
    (tmp / "index.html").write_text("local")
    with Network() as net:
        target = net.add_pod(
            "target", argv=["/usr/bin/python3", "-c", LOGGING_SERVER, str(PORT)], wait_port=PORT
        )
        client = net.add_pod("client", argv=["/bin/sleep", "600"])
        yield ExecWorld(net, target, client, tmp)
