"""Outgoing traffic: direct (in the target's netns) vs through `mirrord exec`, one table.

- bulk: 512 MiB downloaded from the service pod over one TCP connection;
- latency: 1000 sequential HTTP requests, a new connection each (p50/p99 per request);
- hold: 1000 concurrent connections opened and held (errors; peak RSS of the mirrord
  process, which hosts the supervisor and proxy, and of the agent);
- sendto: sendto() with an address (127.0.0.1: the localhost rule would look for the
  program's listeners in /proc) on a connected TCP socket, which ignores it; 2000 calls:
  a trapped call that must cost no routing (µs per call).

Run as root: .venv/bin/python bench/network.py [--mib 512] [--requests 1000] [--conns 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"

SERVERS = """
import socket, sys, threading
mib = int(sys.argv[1])
def bulk():
    s = socket.create_server(('0.0.0.0', 9000), backlog=16)
    block = b'x' * (1 << 20)
    while True:
        c, _ = s.accept()
        try:
            for _ in range(mib): c.sendall(block)
        except OSError: pass
        c.close()
def hold():
    s = socket.create_server(('0.0.0.0', 9001), backlog=4096)
    keep = []
    while True:
        keep.append(s.accept()[0])
threading.Thread(target=bulk, daemon=True).start()
hold()
"""

CLIENT = """
import resource, socket, sys, time
mode, host = sys.argv[1], sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if mode == 'bulk':
    s = socket.create_connection((host, 9000)); buf = bytearray(1 << 20); n = 0
    t = time.perf_counter()
    while True:
        k = s.recv_into(buf)
        if not k: break
        n += k
    print('bulk', n, time.perf_counter() - t)
elif mode == 'latency':
    req = b'GET / HTTP/1.0\\r\\n\\r\\n'; times = []
    for _ in range(int(sys.argv[3])):
        t = time.perf_counter()
        with socket.create_connection((host, 8080)) as s:
            s.sendall(req)
            while s.recv(65536): pass
        times.append(time.perf_counter() - t)
    times.sort()
    print('latency', times[len(times) // 2], times[int(len(times) * 0.99)])
elif mode == 'sendto':
    s = socket.create_connection((host, 9001)); n = int(sys.argv[3])
    t = time.perf_counter()
    for _ in range(n):
        s.sendto(b'x', ('127.0.0.1', 9001))
    print('sendto', (time.perf_counter() - t) / n)
else:
    conns, errors = [], 0
    for _ in range(int(sys.argv[3])):
        try: conns.append(socket.create_connection((host, 9001), timeout=30))
        except OSError: errors += 1
    print('held', len(conns), errors, flush=True)
    sys.stdin.readline()
"""


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _agent_of(pid: int) -> int | None:
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
            if b"mirrord.agent" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def run(target: Pod, via_mirrord: bool, args: list[str], hold: bool = False) -> tuple[str, str]:
    argv = [PY, "-c", textwrap.dedent(CLIENT), *args]
    if via_mirrord:
        argv = [MIRRORD, "exec", "--target", f"pid/{target.main_pid}", "--", *argv]
    else:
        argv = ["ip", "netns", "exec", target.netns, *argv]
    if not hold:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
        return r.stdout.strip(), ""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    line = p.stdout.readline().strip()
    rss = ""
    if via_mirrord:
        agent = _agent_of(p.pid)
        rss = f"mirrord {_hwm_kib(p.pid) // 1024} MiB, agent " + (
            f"{_hwm_kib(agent) // 1024} MiB" if agent else "?"
        )
    p.stdin.write("\n")
    p.stdin.close()
    p.wait(timeout=60)
    return line, rss


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=1000)
    a = ap.parse_args()
    with Network() as net:
        service = net.add_pod("svc", argv=http_server_argv(8080, body="service"), wait_port=8080)
        service.spawn([PY, "-c", SERVERS, str(a.mib)])
        service.wait_listening(9000)
        service.wait_listening(9001)
        target = net.add_pod("target")
        host = service.address
        rows = []
        results = {}
        for via in (False, True):
            bulk, _ = run(target, via, ["bulk", host])
            lat, _ = run(target, via, ["latency", host, str(a.requests)])
            held, rss = run(target, via, ["hold", host, str(a.conns)], hold=True)
            sendto, _ = run(target, via, ["sendto", host, "2000"])
            results[via] = (bulk.split(), lat.split(), held.split(), rss, sendto.split())
        for via in (False, True):
            bulk, lat, held, rss, _sendto = results[via]
            mibs = int(bulk[1]) / (1 << 20) / float(bulk[2])
            rows.append(
                (
                    "mirrord" if via else "direct",
                    f"{mibs:.0f} MiB/s",
                    f"{float(lat[1]) * 1000:.2f} ms",
                    f"{float(lat[2]) * 1000:.2f} ms",
                    f"{held[1]} ok, {held[2]} errors",
                    rss or "-",
                )
            )
        head = ("", f"bulk {a.mib} MiB", "p50 new conn+GET", "p99", f"{a.conns} held", "peak RSS")
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        d, m = results[False], results[True]
        ratio = (int(m[0][1]) / float(m[0][2])) / (int(d[0][1]) / float(d[0][2]))
        added = (float(m[1][1]) - float(d[1][1])) * 1000
        print(f"throughput ratio {ratio:.2f}x direct; added p50 {added:.2f} ms")
        per = [float(results[v][4][1]) * 1e6 for v in (False, True)]
        print(f"sendto with an address on a connected TCP socket: {per[0]:.1f} us/call direct, "
              f"{per[1]:.1f} us/call under mirrord")  # fmt: skip
        streams = os.environ.get("MIRRORD_NO_DIRECT") == "1"
        print("connections:", "gRPC streams" if streams else "direct to the local agent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
