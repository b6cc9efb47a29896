"""Helpers for the incoming-traffic tests (conftest.py cannot be imported under importlib)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess

from mirrord.features.incoming.client import IncomingConnection, Subscription
from mirrord.testpod import Pod

TOKEN = "incoming-test-token-0123456789"

# The target's service: HTTP/1.1 (keep-alive), answers "pod", logs one line per request.
LOGGING_SERVER = """
import sys, http.server
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("REQ", self.command, self.path, self.headers.get("x-user", "-"), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"pod")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# Run in the client pod: send raw requests on ONE connection, print each raw answer.
# argv: host port json-list-of-requests; each answer is read by content-length.
RAW_CLIENT = r"""
import json, socket, sys
host, port, requests = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.create_connection((host, port), timeout=20)
f = s.makefile("rb")
out = []
for req in requests:
    s.sendall(req.encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            break
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    out.append((head + f.read(length)).decode("latin-1"))
print(json.dumps(out))
"""


def request(path: str = "/", headers: dict[str, str] | None = None) -> str:
    lines = [f"GET {path} HTTP/1.1", "Host: target"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def send_requests(client: Pod, host: str, port: int, requests: list[str]) -> list[str]:
    """Blocking: run RAW_CLIENT in the client pod; the answers, raw."""
    done = client.run(
        ["python3", "-c", RAW_CLIENT, host, str(port), json.dumps(requests)], timeout=30
    )
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers


def send_requests_from_host(host: str, port: int, requests: list[str]) -> list[str]:
    """send_requests() from this host's netns: the node, as a pod sees it."""
    argv = ["python3", "-c", RAW_CLIENT, host, str(port), json.dumps(requests)]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers


async def send_requests_async(
    client: Pod | None, host: str, port: int, reqs: list[str]
) -> list[str]:
    """From the client pod, or from this host (the node) when client is None. On a thread:
    the event loop must keep running the agent and the local consumer."""
    if client is None:
        return await asyncio.to_thread(send_requests_from_host, host, port, reqs)
    return await asyncio.to_thread(send_requests, client, host, port, reqs)


LOCAL_BODY = b"local"
LOCAL_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + LOCAL_BODY


async def answer_requests(
    conn: IncomingConnection, seen: list[bytes], body: bytes = LOCAL_BODY
) -> None:
    """The "local program": answer every request on the connection with `body`; each
    request's head goes to `seen`. A connection its session lost just ends."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    buffer = b""
    with contextlib.suppress(ConnectionError):
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await conn.reader.read(65536)
                if not data:
                    await conn.close()
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            seen.append(head + b"\r\n\r\n")
            await conn.write(answer)


async def answer_all(sub: Subscription, seen: list[bytes], body: bytes = LOCAL_BODY) -> None:
    """answer_requests() on every connection the subscription delivers."""
    tasks = []
    try:
        async for conn in sub:
            tasks.append(asyncio.ensure_future(answer_requests(conn, seen, body)))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def mirrord_rules(pod: Pod) -> list[str]:
    """Every line mentioning mirrord in the pod's netns, for both backends and raw nft."""
    found: list[str] = []
    for argv in (["iptables-legacy-save"], ["iptables-nft-save"], ["nft", "list", "ruleset"]):
        done = pod.run(argv)
        assert done.returncode == 0, (argv, done.stderr)
        found += [line for line in done.stdout.decode().splitlines() if "mirrord" in line.lower()]
    return found


def packet_sockets(pod: Pod) -> int:
    """How many packet sockets the pod's netns has (a mirror reads its copies from one)."""
    done = pod.run(["cat", "/proc/net/packet"])
    assert done.returncode == 0, done.stderr
    return len(done.stdout.decode().splitlines()) - 1


def wait_until(predicate: object, timeout: float = 15.0) -> None:
    """Poll a condition (a callable); the caller asserts the condition afterwards."""
    import time

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.1)


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
