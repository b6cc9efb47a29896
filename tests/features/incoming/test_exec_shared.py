"""#13: two developers' `mirrord exec` sessions steal the same port of one pod through one
agent, each with its own header filter; one is SIGKILLed mid-request and the other loses
nothing. Real CLI, real agent process, real iptables, a real client in another pod."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod
from tests.features.incoming.incoming_helpers import (
    LOGGING_SERVER,
    mirrord_rules,
    request,
    send_requests,
)

pytestmark = pytest.mark.root

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
TOKEN = "shared-port-test-token-0123456789"

# The developer's program: answers NAME; /slow after 2 s. On its own local port (two
# developers here share one machine), mapped to the pod's 8080 (port_mapping).
LOCAL = """
import http.server, sys, time
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2)
        self.send_response(200); self.send_header("Content-Length", str(len(name)))
        self.end_headers(); self.wfile.write(name)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
"""


@pytest.fixture
def world(network: Network) -> Iterator[tuple[Pod, Pod, str]]:
    target = network.add_pod(
        "target", argv=["/usr/bin/python3", "-c", LOGGING_SERVER, "8080"], wait_port=8080
    )
    client = network.add_pod("client", argv=["/bin/sleep", "600"])
    agent = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--listen", "127.0.0.1:0"],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert agent.stdout is not None
        address = agent.stdout.readline().decode().split()[-1]
        yield target, client, address
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    assert mirrord_rules(target) == []


def developer(target: Pod, address: str, name: str, tmp: Path) -> subprocess.Popen[bytes]:
    cfg = tmp / f"{name}.json"
    flt = {"header_filter": f"^x-user: {name}$"}
    local_port = 18000 + ord(name)
    incoming = {"mode": "steal", "http_filter": flt, "port_mapping": [[local_port, 8080]]}
    cfg.write_text(json.dumps({"feature": {"network": {"incoming": incoming}}}))
    return subprocess.Popen(
        [MIRRORD, "exec", "--target", f"pid/{target.main_pid}", "--agent-address", address,
         "-f", str(cfg), "--", "/usr/bin/python3", "-c", LOCAL, name.upper(), str(local_port)],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def body(answer: str) -> str:
    return answer.rpartition("\r\n\r\n")[2]


def ask(client: Pod, target: Pod, users: list[str | None]) -> list[str]:
    reqs = [request(f"/{i}", {"X-User": u} if u else {}) for i, u in enumerate(users)]
    return [body(a) for a in send_requests(client, target.address, 8080, reqs)]


def _try_ask(client: Pod, target: Pod, users: list[str | None]) -> list[str] | None:
    """ask(), or None while the sessions are still starting (a connection may be reset
    before the first program listens)."""
    try:
        return ask(client, target, users)
    except AssertionError:
        return None


def test_two_mirrord_sessions_share_a_port_and_one_dies_mid_request(
    world: tuple[Pod, Pod, str], tmp_path: Path
) -> None:
    target, client, address = world
    devs = {name: developer(target, address, name, tmp_path) for name in ("a", "b")}
    try:
        deadline = time.monotonic() + 60
        while _try_ask(client, target, ["a", "b"]) != ["A", "B"]:
            for dev in devs.values():
                assert dev.poll() is None, dev.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the two sessions never both received"
            time.sleep(0.3)
        # One keep-alive connection, requests for each and for no one.
        assert ask(client, target, ["a", "b", None, "b", "a"]) == ["A", "B", "pod", "B", "A"]
        # B answers slowly; A is SIGKILLed meanwhile.
        slow = client.spawn(
            ["/usr/bin/python3", "-c",
             f"import urllib.request as u; r = u.Request('http://{target.address}:8080/slow', "
             "headers={'x-user': 'b'}); print(u.urlopen(r, timeout=30).read().decode())"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.8)
        os.killpg(devs["a"].pid, signal.SIGKILL)
        devs["a"].wait(10)
        out, _ = slow.communicate(timeout=30)
        assert out.decode().strip() == "B"  # B's answer, whole
        deadline = time.monotonic() + 15
        while ask(client, target, ["a"]) != ["pod"]:  # A's share is freed: its requests
            assert time.monotonic() < deadline  # reach the pod again
            time.sleep(0.2)
        assert ask(client, target, ["b", "a", "b"]) == ["B", "pod", "B"]
    finally:
        for dev in devs.values():
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGTERM)
                dev.wait(30)
    assert not any("mirrord:steal" in r for r in mirrord_rules(target))
