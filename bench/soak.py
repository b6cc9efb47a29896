"""Soak: N minutes (default 10) of mixed mirrord sessions against one shared agent, with the
agent's and the long session's memory and fd counts sampled each minute. Flat = pass.

- One long `mirrord exec` session (steal of 8080) runs a program that, in a loop, resolves
  the service's name through the pod's DNS, makes an outgoing HTTP request to it, sends a
  UDP datagram to the service's echo server and reads a file of the pod; a client pod
  sends it HTTP requests on the target's port 8080 all along (stolen).
- Every 15 s a short session (outgoing, DNS, a file, a steal of 8082 that is
  subscribed and released) comes and goes on the same agent.
- Each minute: the agent's and the long session mirrord's RSS and open fds, mirrord's
  rules in the target's netns, and what each workload did in that minute.

Run as root: .venv/bin/python bench/soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
SVC_NAME = "svc.soak.internal"

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9999))
while True:
    d, a = s.recvfrom(65536); s.sendto(b"echo:" + d, a)
"""

# The long session's program: a stolen HTTP server on 8080 and a loop of outgoing work.
# Writes its counters (JSON) to argv[1] every second.
LONG = """
import http.server, json, os, socket, sys, threading, time, urllib.request
counts = {"outgoing": 0, "dns": 0, "udp": 0, "files": 0, "stolen": 0, "errors": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        counts["stolen"] += 1
        self.send_response(200); self.send_header("Content-Length", "5"); self.end_headers()
        self.wfile.write(b"local")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
def dump():
    while True:
        with open(sys.argv[1] + ".tmp", "w") as f:
            json.dump(counts, f)
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(1)
threading.Thread(target=dump, daemon=True).start()
name = sys.argv[2]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
while True:
    try:
        addr = socket.getaddrinfo(name, 8080, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        counts["dns"] += 1
        body = urllib.request.urlopen(f"http://{addr}:8080/", timeout=10).read()
        counts["outgoing"] += body == b"service"
        u.sendto(b"ping", (addr, 9999)); counts["udp"] += u.recv(100) == b"echo:ping"
        counts["files"] += open("/srv/soak.txt").read() == "soak\\n"
    except Exception as e:
        counts["errors"] += 1
        print("error", repr(e), file=sys.stderr, flush=True)
    time.sleep(0.05)
"""

# A short session: the same outgoing work once, a steal of 8082 subscribed and released.
SHORT = """
import socket, sys, urllib.request
addr = socket.getaddrinfo(sys.argv[1], 8080, socket.AF_INET)[0][4][0]
assert urllib.request.urlopen(f"http://{addr}:8080/", timeout=10).read() == b"service"
assert open("/srv/soak.txt").read() == "soak\\n"
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8082)); s.listen(); s.close()
"""

# From the client pod: a new connection per request to the target's 8080, ~20 per second.
CLIENT = """
import socket, sys, time
ok = bad = 0
while True:
    try:
        s = socket.create_connection((sys.argv[1], 8080), timeout=5)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        s.close()
        ok += got.endswith(b"local")
    except OSError:
        bad += 1
    time.sleep(0.05)
"""


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int, netns_pids: list[int]) -> str:
    """What a process's fds are: sockets by table and TCP state (looked up in the tables
    of each network namespace given by one of its processes), pipes, files."""
    kinds: dict[str, str] = {}
    for ns_pid in netns_pids:
        for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
            try:
                lines = Path(f"/proc/{ns_pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if table == "unix" and len(parts) >= 7:
                    kinds[parts[6]] = "unix"
                elif len(parts) >= 10:
                    kinds[parts[9]] = table + ("" if table.startswith("udp") else ":" + parts[3])
    counts: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            kind = kinds.get(link[8:-1], "socket?")
        else:
            kind = link.split(":", 1)[0] if ":" in link else "file"
        counts[kind] = counts.get(kind, 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def rule_count(pod: Pod) -> int:
    """mirrord's rules in the pod's netns (both iptables backends)."""
    found = 0
    for save in ("iptables-legacy-save", "iptables-nft-save"):
        out = pod.run([save, "-t", "nat"]).stdout.decode()
        found += sum(1 for line in out.splitlines() if line.startswith("-A") and "MIRRORD" in line)
    return found


def start_agent(token: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--listen", "127.0.0.1:0"],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert agent.stdout is not None
    line = agent.stdout.readline().decode().split()
    return agent, line[-1]


def mirrord(
    target: int, address: str, token: str, config: Path, argv: list[str], **kw: object
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [MIRRORD, "exec", "--target", f"pid/{target}", "--agent-address", address,
         "-f", str(config), "--", *argv],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": token},
        **kw,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument(
        "--fd-detail", action="store_true", help="also print what the agent's fds are, each minute"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mirrord-soak-"))
    try:
        code = soak(args, tmp)
    except BaseException:
        print(f"soak: its logs are kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # a run that went well leaves nothing behind
    return code


def soak(args: argparse.Namespace, tmp: Path) -> int:
    token = secrets.token_urlsafe(24)
    steal = tmp / "steal.json"
    steal.write_text(json.dumps({"feature": {"network": {"incoming": "steal"}}}))
    with Network() as net:
        service = net.add_pod("svc", argv=http_server_argv(8080, body="service"), wait_port=8080)
        service.spawn([PY, "-c", UDP_ECHO])
        target = net.add_pod(
            "target",
            argv=http_server_argv(8080, body="pod"),
            wait_port=8080,
            files={"/srv/soak.txt": b"soak\n"},
        )
        target.spawn(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--bind-interfaces", f"--listen-address={target.address}", "--user=root",
             "--pid-file=", f"--host-record={SVC_NAME},{service.address}"],
        )  # fmt: skip
        target.wait_listening(53)
        client = net.add_pod("client", argv=["/bin/sleep", "86400"])
        agent, address = start_agent(token, tmp / "agent.log")
        counts_file = tmp / "counts.json"
        long_err = (tmp / "long.err").open("wb")
        long = mirrord(
            target.main_pid, address, token, steal,
            [PY, "-c", LONG, str(counts_file), SVC_NAME],
            stdout=subprocess.DEVNULL, stderr=long_err, start_new_session=True,
        )  # fmt: skip
        while rule_count(target) == 0:
            assert long.poll() is None, (tmp / "long.err").read_text()
            time.sleep(0.1)
        poker = client.spawn([PY, "-c", CLIENT, target.address])
        rows: list[list[str]] = []
        short_ok = short_bad = 0
        last: dict[str, int] = {}
        started = time.monotonic()
        next_short = started
        try:
            for minute in range(1, args.minutes + 1):
                minute_end = started + 60 * minute
                while time.monotonic() < minute_end:
                    if time.monotonic() >= next_short:
                        next_short += 15
                        short = mirrord(
                            target.main_pid, address, token, steal, [PY, "-c", SHORT, SVC_NAME],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        )  # fmt: skip
                        _, err = short.communicate(timeout=60)
                        if short.returncode == 0:
                            short_ok += 1
                        else:
                            short_bad += 1
                            print(err.decode(errors="replace")[-500:], file=sys.stderr)
                    time.sleep(0.2)
                    assert long.poll() is None, "the long session ended"
                counts = json.loads(counts_file.read_text())
                delta = {k: v - last.get(k, 0) for k, v in counts.items()}
                last = counts
                a_rss, a_fds = proc_stats(agent.pid)
                m_rss, m_fds = proc_stats(long.pid)
                rows.append(
                    [str(minute), f"{a_rss:.1f}", str(a_fds), f"{m_rss:.1f}", str(m_fds),
                     str(rule_count(target)), str(delta["outgoing"]), str(delta["dns"]),
                     str(delta["udp"]), str(delta["files"]), str(delta["stolen"]),
                     f"{short_ok}/{short_ok + short_bad}", str(delta["errors"])]
                )  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
                if args.fd_detail:
                    detail = fd_kinds(agent.pid, [agent.pid, target.main_pid])
                    print(f"  agent fds: {detail}", file=sys.stderr, flush=True)
        finally:
            poker.kill()
            os.killpg(long.pid, signal.SIGTERM)
            long.wait(30)
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
    header = ["min", "agent RSS MiB", "agent fds", "mirrord RSS MiB", "mirrord fds", "rules",
              "outgoing", "dns", "udp", "files", "stolen", "short sessions", "errors"]  # fmt: skip
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if len(rows) >= 3:
        first, final = rows[1], rows[-1]  # from minute 2: start-up allocations are done
        print(
            f"\nfrom minute 2 to {final[0]}: agent RSS {first[1]} -> {final[1]} MiB, fds "
            f"{first[2]} -> {final[2]}; mirrord RSS {first[3]} -> {final[3]} MiB, fds "
            f"{first[4]} -> {final[4]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
