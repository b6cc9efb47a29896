"""Incoming traffic: HTTP/1.1 from a client pod to the target pod's port 8080, one table.

- direct: the pod's own server answers (no mirrord);
- stolen: `mirrord exec` (steal) — the same server, run locally, answers;
- mirrored: `mirrord exec` (mirror) — the pod's server answers, the local one gets copies.

Per scenario, from the client pod: requests/s and p50/p99 latency over one keep-alive
connection, and over a new connection per request. The server is the same python
http.server (HTTP/1.1 keep-alive) in the pod and locally. Under mirrord, also the CPU time
per request of the agent and of the mirrord process (proxy + tracer thread): on a busy
machine latency is noisy, CPU per request much less so.

- filtered sessions (`--modes filtered`): 1, 2 and 5 `mirrord exec` sessions on one
  shared agent steal port 8080 together, each with its header filter; req/s over one
  keep-alive connection for requests cycling over the sessions' users, and for requests
  no filter matches (they reach the pod through the agent), against direct.

- stolen/r and mirrored/r (in the default `--modes`): the same through the
  agent's relay and with a redirecting mirror, the paths a meshed pod (mirror) and the
  ptrace engine (steal) still take, side by side with the default ones.

Run as root: .venv/bin/python bench/incoming.py [--requests 2000]
  [--modes steal,steal-relay,mirror,mirror-redirect,filtered]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrord.testpod import Network, Pod

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"

SERVER = """
import os, signal, sys, threading, time, http.server
served = [0]
def write_count():
    # Under mirrord: how many requests (copies, when mirrored) the local program got.
    if path := os.environ.get("BENCH_COUNT_FILE"):
        with open(path + ".tmp", "w") as f:
            f.write(str(served[0]))
        os.rename(path + ".tmp", path)
def report(*_):
    write_count()
    os._exit(0)
def keep_writing():
    while True:
        time.sleep(0.1)
        write_count()
signal.signal(signal.SIGTERM, report)
if os.environ.get("BENCH_COUNT_FILE"):
    threading.Thread(target=keep_writing, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else header and body writes meet delayed ACKs (40 ms)
    def do_GET(self):
        served[0] += 1
        self.send_response(200)
        self.send_header("X-Served-By", os.environ.get("BENCH_NAME", "pod"))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
port = int(os.environ.get("BENCH_PORT", "8080"))
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# Filtered sessions: one keep-alive connection, requests with `X-User: U` cycling over
# the users given; prints req/s.
USERS_CLIENT = """
import json, socket, sys, time
host, n, users = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
expect = sys.argv[4].encode() if len(sys.argv) > 4 else None  # X-Served-By, checked once
reqs = [b"GET / HTTP/1.1\\r\\nHost: t\\r\\nX-User: " + u.encode() + b"\\r\\n\\r\\n" for u in users]
s = socket.create_connection((host, 8080), timeout=30)
def one(req):
    s.sendall(req); got = b""
    while not got.endswith(b"ok"):
        chunk = s.recv(65536)
        if not chunk: raise SystemExit("closed early")
        got += chunk
    return got
if expect is not None and b"X-Served-By: " + expect not in one(reqs[0]):
    raise SystemExit("served by someone else")
start = time.perf_counter()
for i in range(n):
    one(reqs[i % len(reqs)])
print(json.dumps(n / (time.perf_counter() - start)))
"""

CLIENT = """
import json, socket, sys, time
host, n, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "keep"
close = b"" if keep else b"Connection: close\\r\\n"
req = b"GET / HTTP/1.1\\r\\nHost: t\\r\\n" + close + b"\\r\\n"
def one(s):
    s.sendall(req); got = b""
    while not got.endswith(b"ok"):
        chunk = s.recv(65536)
        if not chunk: raise SystemExit("closed early")
        got += chunk
times = []
s = socket.create_connection((host, 8080)) if keep else None
start = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    if keep:
        one(s)
    else:
        with socket.create_connection((host, 8080)) as c:
            one(c)
    times.append(time.perf_counter() - t)
total = time.perf_counter() - start
times.sort()
print(json.dumps([n / total, times[n // 2] * 1e3, times[int(n * 0.99)] * 1e3]))
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_of(pid: int) -> int:
    """The local agent `mirrord exec` started (its child running mirrord.agent)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"mirrord.agent" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError("no local agent")


def load(client: Pod, host: str, n: int, keep: bool, watch: tuple[int, ...] = ()) -> list[float]:
    """[req/s, p50 ms, p99 ms] and, per watched pid, its CPU µs per request."""
    before = [cpu_seconds(pid) for pid in watch]
    done = client.run([PY, "-c", CLIENT, host, str(n), "keep" if keep else "new"], timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result: list[float] = json.loads(done.stdout)
    return result + [(cpu_seconds(pid) - b) / n * 1e6 for pid, b in zip(watch, before, strict=True)]


def served(count: Path) -> int:
    return int(count.read_text()) if count.exists() else -1


def rules(target: Pod) -> str:
    return (
        target.run(["iptables-save"]).stdout.decode()
        + target.run(["iptables-nft-save"]).stdout.decode()
    )


def packet_sockets(target: Pod) -> int:
    return len(target.run(["cat", "/proc/net/packet"]).stdout.decode().splitlines()) - 1


def under_mirrord(
    target: Pod, mode: str, tmp: Path, tag: str = "", env: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`tag` names the run's files (default: the mode); `env`: NAME=VALUE for mirrord (and
    the local agent it starts)."""
    tag = tag or mode
    cfg = tmp / f"{tag}.json"
    cfg.write_text(json.dumps({"feature": {"network": {"incoming": {"mode": mode}}}}))
    packets = packet_sockets(target)
    proc = subprocess.Popen(
        ["env", f"BENCH_COUNT_FILE={tmp / tag}.count", *env, MIRRORD, "exec",
         "--target", f"pid/{target.main_pid}", "-f", str(cfg), "--", PY, "-c", SERVER],
        stdout=subprocess.DEVNULL, stderr=(tmp / f"{tag}.err").open("wb"),
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    # Subscribed: the redirect rule is in the pod, or (a mirror) its packet socket.
    while f"mirrord:{mode}:8080" not in rules(target) and not (
        mode == "mirror" and packet_sockets(target) > packets
    ):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{mode}: no subscription")
        time.sleep(0.05)
    return proc


def users_load(
    client: Pod, host: str, n: int, users: list[str], expect: str | None = None
) -> float:
    argv = [PY, "-c", USERS_CLIENT, host, str(n), ",".join(users), *([expect] if expect else [])]
    done = client.run(argv, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(json.loads(done.stdout))


def filtered_sessions(target: Pod, client: Pod, n: int, tmp: Path) -> dict[int, list[float]]:
    """Per number of sessions, through one shared agent: [matched req/s, the agent's CPU
    µs per matched request, unmatched req/s, CPU µs per unmatched request]."""
    token = "bench-filtered-sessions-token-0123"
    env = {**os.environ, "MIRRORD_AGENT_TOKEN": token}
    agent = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--listen", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert agent.stdout is not None
    address = agent.stdout.readline().decode().split()[-1]
    out: dict[int, list[float]] = {}
    try:
        for k in (1, 2, 5):
            procs = []
            users = [f"u{i}" for i in range(k)]
            try:
                for i, u in enumerate(users):
                    port = 18100 + i
                    flt = {"header_filter": f"^x-user: {u}$"}
                    inc = {"mode": "steal", "http_filter": flt, "port_mapping": [[port, 8080]]}
                    cfg = tmp / f"filtered-{k}-{i}.json"
                    cfg.write_text(json.dumps({"feature": {"network": {"incoming": inc}}}))
                    procs.append(subprocess.Popen(
                        [MIRRORD, "exec", "--target", f"pid/{target.main_pid}",
                         "--agent-address", address, "-f", str(cfg), "--", PY, "-c", SERVER],
                        env={**env, "BENCH_PORT": str(port), "BENCH_NAME": u},
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True,
                    ))  # fmt: skip
                for u in users:  # each session answers its own user
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            users_load(client, target.address, 1, [u], expect=u)
                            break
                        except RuntimeError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.2)
                users_load(client, target.address, 100, users)  # warm-up
                users_load(client, target.address, 1, ["nobody"], expect="pod")
                out[k] = []
                for who in (users, ["nobody"]):
                    before = cpu_seconds(agent.pid)
                    rate = users_load(client, target.address, n, who)
                    out[k] += [rate, (cpu_seconds(agent.pid) - before) / n * 1e6]
            finally:
                for proc in procs:
                    stop(proc)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--modes",
        default="steal,steal-relay,mirror,mirror-redirect",
        help="comma-separated: steal, mirror; steal-relay and "
        "mirror-redirect: the same through the agent's relay (MIRRORD_NO_HANDOFF=1) and "
        "with a redirecting mirror (MIRRORD_MIRROR_REDIRECT=1), the paths before the "
        "handoff and the packet-reading mirror; filtered",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds to keep loading each mirrord scenario after the measured runs "
        "(to attach a profiler to the agent, whose pid is printed)",
    )
    args = parser.parse_args()
    n = args.requests
    modes = args.modes.split(",")
    results: dict[str, dict[str, list[float]]] = {}
    copies: dict[str, int] = {}  # requests the local program served 1 s after the load
    late: dict[str, int] = {}  # served after that (the program lagged behind)
    filtered: dict[int, list[float]] = {}
    with Network() as net, tempfile.TemporaryDirectory() as tmp:
        target = net.add_pod("target", argv=[PY, "-c", SERVER], wait_port=8080)
        client = net.add_pod("client", argv=["/bin/sleep", "3600"])
        results["direct"] = {
            k: load(client, target.address, n, k == "keep") for k in ("keep", "new")
        }
        if "filtered" in modes:
            filtered = filtered_sessions(target, client, n, Path(tmp))
        scenarios = (
            ("steal", "steal", "stolen", ()),
            ("steal-relay", "steal", "stolen/r", ("MIRRORD_NO_HANDOFF=1",)),
            ("mirror", "mirror", "mirrored", ()),
            ("mirror-redirect", "mirror", "mirrored/r", ("MIRRORD_MIRROR_REDIRECT=1",)),
        )
        for wanted, mode, name, env in scenarios:
            if wanted not in modes:
                continue
            proc = under_mirrord(target, mode, Path(tmp), name.replace("/", "-"), env)
            watch = (agent_of(proc.pid), proc.pid)
            try:
                load(client, target.address, 100, True)  # warm-up: streams, code paths
                results[name] = {
                    k: load(client, target.address, n, k == "keep", watch) for k in ("keep", "new")
                }
                if args.hold:
                    print(f"{mode}: agent pid {watch[0]}", flush=True)
                    until = time.monotonic() + args.hold
                    while time.monotonic() < until:
                        load(client, target.address, 500, False)
                count = Path(tmp) / f"{name.replace('/', '-')}.count"
                time.sleep(1.0)  # copies still on their way to the local program
                copies[name] = served(count)
                # The traced program may lag behind the pod (copies wait in its accept
                # queue): until it caught up, or made no progress for 2 s.
                last, since = copies[name], time.monotonic()
                while last < 100 + 2 * n and time.monotonic() - since < 2.0:
                    time.sleep(0.1)
                    if (now := served(count)) != last:
                        last, since = now, time.monotonic()
            finally:
                stop(proc)
            late[name] = served(count) - copies[name]
            err = Path(tmp) / f"{name.replace('/', '-')}.err"
            for line in err.read_text(errors="replace").splitlines():
                if line.startswith("mirrord: port"):
                    print(f"{mode}: {line}")  # the proxy's account of lost connections
    print(f"HTTP/1.1 GET, {n} sequential requests from the client pod to target:8080\n")
    head = f"{'':10}" + "".join(
        f"{label:>34}" for label in ("one keep-alive connection", "a connection per request")
    )
    print(head)
    print(f"{'':10}" + f"{'req/s':>12}{'p50 ms':>11}{'p99 ms':>11}" * 2)
    for name, by in results.items():
        row = "".join(f"{r[0]:>12.0f}{r[1]:>11.3f}{r[2]:>11.3f}" for r in (by["keep"], by["new"]))
        print(f"{name:10}{row}")
    print("\nCPU µs per request" + "".join(f"{label:>34}" for label in ("keep-alive", "per conn")))
    print(f"{'':18}" + f"{'agent':>17}{'mirrord':>17}" * 2)
    for name in ("stolen", "stolen/r", "mirrored", "mirrored/r"):
        if name not in results:
            continue
        by = results[name]
        row = "".join(f"{r[3]:>17.0f}{r[4]:>17.0f}" for r in (by["keep"], by["new"]))
        print(f"{name:18}{row}")
    for name, got in copies.items():
        sent = f"{100 + 2 * n} sent" + (", plus the --hold load" if args.hold else "")
        print(
            f"{name}: the local program served {got} requests 1 s after the load ({sent}), "
            f"{got + late[name]} in the end"
        )
    d = results["direct"]
    print()
    for name in ("stolen", "stolen/r", "mirrored", "mirrored/r"):
        if r := results.get(name):
            print(
                f"{name}/direct req/s: keep-alive {r['keep'][0] / d['keep'][0]:.2f}x, "
                f"per-connection {r['new'][0] / d['new'][0]:.2f}x "
                "(targets: keep-alive >= 0.8x, per-connection >= 0.5x)"
            )
    for name in ("mirrored", "mirrored/r"):
        if m := results.get(name):
            print(
                f"{name} adds to the pod's p50: keep-alive "
                f"{m['keep'][1] - d['keep'][1]:+.3f} ms, "
                f"per-connection {m['new'][1] - d['new'][1]:+.3f} ms (target <= 1 ms)"
            )
    print("/r: the agent's relay, a redirecting mirror (MIRRORD_NO_HANDOFF/MIRROR_REDIRECT=1)")
    if filtered:
        direct = results["direct"]["keep"][0]
        print(
            "\nfiltered sessions on one port (one keep-alive connection, req/s; x direct; "
            "the agent's CPU µs per request):"
        )
        print(
            f"{'sessions':>10}{'matched':>12}{'x':>7}{'CPU':>6}{'unmatched':>12}{'x':>7}{'CPU':>6}"
        )
        for k, (matched, m_cpu, unmatched, u_cpu) in filtered.items():
            print(
                f"{k:>10}{matched:>12.0f}{matched / direct:>7.2f}{m_cpu:>6.0f}"
                f"{unmatched:>12.0f}{unmatched / direct:>7.2f}{u_cpu:>6.0f}"
            )
        print("target: matched >= 0.5x direct for keep-alive at 5 sessions")
    streams = os.environ.get("MIRRORD_NO_DIRECT") == "1"
    print("connections:", "gRPC streams" if streams else "direct from the local agent")


if __name__ == "__main__":
    main()
