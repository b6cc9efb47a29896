"""Signals hitting calls the supervisor serves, with the notify engine: a program blocked
in accept(), recv() or connect() under mirrord runs its handlers promptly (Ctrl-C raises
KeyboardInterrupt, a SIGTERM handler runs), the call then goes on as natively, and
nothing is lost: bursts of stolen connections and of UDP datagrams while the program is
hit by a signal every millisecond, for python3 and a static Go program."""

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

import pytest

from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv
from tests.e2e.interrupts import interrupting
from tests.features.incoming.incoming_helpers import LOGGING_SERVER, mirrord_rules
from tests.features.outgoing.net_world import UDP_ECHO

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
PORT = 8080
BLACKHOLE = 81  # the service pod drops SYNs to it: a connect that waits


@dataclass
class World:
    target: Pod
    service: Pod
    client: Pod
    tmp: Path

    def start(
        self, argv: list[str], steal: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        cfg = self.tmp / f"cfg-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps({"feature": {"network": {"incoming": "steal"}}} if steal else {}))
        return subprocess.Popen(
            [MIRRORD, "exec", "--target", f"pid/{self.target.main_pid}", "-f", str(cfg), "--",
             *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, env=env,
        )  # fmt: skip

    def wait_stolen(self, proc: subprocess.Popen[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(f"mirrord:steal:{PORT}" in r for r in mirrord_rules(self.target)):
            assert proc.poll() is None and time.monotonic() < deadline, "no steal rule"
            time.sleep(0.05)

    def burst(self, count: int, parallel: int) -> list[str]:
        """`count` GETs from the client pod, `parallel` at a time, each on a new connection."""
        script = (
            "import sys, urllib.request, concurrent.futures as cf\n"
            "url, n, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
            "get = lambda i: urllib.request.urlopen(url + str(i), timeout=30).read().decode()\n"
            "with cf.ThreadPoolExecutor(par) as ex:\n"
            "    print('\\n'.join(ex.map(get, range(n))))\n"
        )
        url = f"http://{self.target.address}:{PORT}/r"
        r = self.client.run([PY, "-c", script, url, str(count), str(parallel)], timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout.decode().split()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Network() as net:
        service = net.add_pod("svc", argv=http_server_argv(8080, body="service"), wait_port=8080)
        service.spawn([PY, "-c", UDP_ECHO])
        service.run(
            ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(BLACKHOLE), "-j", "DROP"],
            check=True,
        )
        target = net.add_pod(
            "target",
            argv=[PY, "-c", LOGGING_SERVER, str(PORT)],
            wait_port=PORT,
            hosts_entries={"svc.pod.internal": service.address},  # podview-go's view()
        )
        client = net.add_pod("client", argv=["/bin/sleep", "3600"])
        yield World(target, service, client, tmp_path_factory.mktemp("signals"))
        assert mirrord_rules(target) == []


def _ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), (line, proc.stderr.read() if proc.stderr else "")
    return line


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running:\n{out}\n{err}") from None
    return proc.returncode, out, err


# --- python3 blocked in accept/recv/connect ------------------------------------------

CTRL_C_IN_ACCEPT = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen()
print("READY", flush=True)
t0 = time.monotonic()
try:
    s.accept()
except KeyboardInterrupt:
    print("KeyboardInterrupt after %.2f" % (time.monotonic() - t0), flush=True)
"""


def test_ctrl_c_interrupts_a_blocking_accept(world: World) -> None:
    p = world.start([PY, "-c", CTRL_C_IN_ACCEPT])
    _ready(p)
    world.wait_stolen(p)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)  # forwarded to the program, as `kill -INT` would
    code, out, err = _finish(p)
    assert code == 0, err
    took = float(out.split("KeyboardInterrupt after ")[1])
    assert took < 5, out  # prompt: the supervisor's watch ticks every 10 ms


TERM_IN_ACCEPT = f"""
import signal, socket, time
handled = []
signal.signal(signal.SIGTERM, lambda *a: handled.append(time.monotonic()))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen()
print("READY", flush=True)
c, peer = s.accept()  # the handler runs while we wait; the accept goes on
c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nlocal")
print("handled", len(handled), "then served", peer[0], flush=True)
"""


def test_a_sigterm_handler_runs_and_the_accept_goes_on(world: World) -> None:
    p = world.start([PY, "-c", TERM_IN_ACCEPT])
    _ready(p)
    world.wait_stolen(p)
    os.kill(_program_pid(p), signal.SIGTERM)
    time.sleep(0.5)
    assert world.burst(1, 1) == ["local"]
    code, out, err = _finish(p)
    assert code == 0, err
    assert out.split() == ["handled", "1", "then", "served", world.client.address], out


ALARM_IN_RECV = """
import signal, socket, sys, threading, time
host = sys.argv[1]
alarms = []
signal.signal(signal.SIGALRM, lambda *a: alarms.append(time.monotonic()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"first", (host, 9999)); print(s.recvfrom(100)[0].decode(), flush=True)
print("READY", flush=True)
t0 = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.2)
threading.Timer(0.8, s.sendto, (b"late", (host, 9999))).start()
data, addr = s.recvfrom(100)  # blocking, with the address: performed by the supervisor
print("alarm after %.2f" % (alarms[0] - t0), data.decode(), addr[0], addr[1], flush=True)
"""


def test_a_signal_during_a_blocking_recvfrom_runs_its_handler_and_loses_nothing(
    world: World,
) -> None:
    p = world.start([PY, "-c", ALARM_IN_RECV, world.service.address], steal=False)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "echo:first"
    _ready(p)
    code, out, err = _finish(p)
    assert code == 0, err
    fields = out.split()
    assert float(fields[2]) < 0.6, out  # the handler ran before the datagram came
    assert fields[3:] == ["echo:late", world.service.address, "9999"], out


CTRL_C_IN_CONNECT = f"""
import socket, sys, time
print("READY", flush=True)
t0 = time.monotonic()
try:
    socket.create_connection((sys.argv[1], {BLACKHOLE}))  # SYNs dropped in the pod
except KeyboardInterrupt:
    print("KeyboardInterrupt after %.2f" % (time.monotonic() - t0), flush=True)
"""


def test_ctrl_c_interrupts_a_connect_that_waits_for_the_pod(world: World) -> None:
    p = world.start([PY, "-c", CTRL_C_IN_CONNECT, world.service.address], steal=False)
    _ready(p)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    code, out, err = _finish(p)
    assert code == 0, err
    assert float(out.split("KeyboardInterrupt after ")[1]) < 5, out


def test_a_signal_gives_a_pod_connect_time_to_finish(
    world: World, programs: dict[str, Path]
) -> None:
    """#12: a signal every 20 ms ended a pod connect at the first watch tick, EINTR with the
    socket not yet connected (natively it connects in the background, and CPython waits
    for it: SO_ERROR 0 on an unconnected socket, EPIPE then). A pod connect now gets
    CONNECT_GRACE_S (0.25 s) before a signal ends it; one that never ends still does."""
    argv = [str(programs["slowconnect"]), world.service.address, str(BLACKHOLE), "20"]
    p = world.start(argv, steal=False)
    code, out, err = _finish(p)
    assert code == 0, err
    how, _, after = out.strip().rpartition(" after ")
    assert how == "Interrupted system call", out
    assert 0.2 < float(after) < 2, out


def _connects(out: str) -> dict[str, int]:
    words = out.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


@pytest.mark.parametrize(
    ("engine", "path"), [("notify", "direct"), ("notify", "streams"), ("ptrace", "direct")]
)
def test_300_connects_under_a_1ms_sigalrm_are_usable(
    world: World, programs: dict[str, Path], engine: str, path: str
) -> None:
    """#12: under a SIGALRM every millisecond with no SA_RESTART, connect() returned EINTR
    on a socket mirrord had not connected yet (natively the connection goes on and
    completes): 6/300 broken from CPython. Natively here: 300/300.

    On the ptrace engine the call stops before any signal can end it: 300/300. On the
    notify engine, a signal that arrives before mirrord has *received* the notification
    (a few microseconds after the call starts) ends the call in the kernel, unseen: EINTR
    at once, and nothing mirrord can connect (~0.3% of connects under a 1 kHz timer here,
    see docs/architecture.md). Every other interrupted connect must complete as natively;
    those fast kernel EINTRs are the only broken ones, and they stay rare."""
    argv = [str(programs["connects"]), world.service.address, str(PORT), "300"]
    native = world.target.run(argv, timeout=120)
    assert _connects(native.stdout.decode())["ok"] == 300, native.stdout
    env = {**os.environ, "MIRRORD_ENGINE": engine}
    if path == "streams":  # connections over the agent's gRPC streams: slower pod connects
        env["MIRRORD_NO_DIRECT"] = "1"
    code, out, err = _finish(world.start(argv, steal=False, env=env), timeout=180)
    assert code == 0, err
    got = _connects(out)
    assert got["broken_slow"] == 0, out  # interrupted after mirrord took it: completes
    if engine == "ptrace":
        assert got["ok"] == 300, out
    else:
        assert got["broken"] == got["broken_fast"] == got["eintr_fast"], out
        assert got["broken"] <= 15, out  # ~0.3% direct, ~1% streams here; 6% before


def _program_pid(p: subprocess.Popen[str]) -> int:
    """The program mirrord runs (its child that is not the local agent)."""
    for _ in range(100):
        for task in os.listdir(f"/proc/{p.pid}/task"):
            for child in Path(f"/proc/{p.pid}/task/{task}/children").read_text().split():
                if b"mirrord.agent" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
        time.sleep(0.05)
    raise AssertionError("no program process")


# --- bursts under a signal every millisecond -----------------------------------------------

PY_BURST_SERVER = f"""
import signal, socket, sys
n = int(sys.argv[1])
ticks = []
signal.signal(signal.SIGALRM, lambda *a: ticks.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
def again(call, *args):
    # A signal in the microsecond before mirrord has received a trapped call ends it
    # with EINTR (seccomp_unotify(2): the kernel waits killably only after that), even
    # bind/listen, which never do natively and which Python does not retry.
    while True:
        try:
            return call(*args)
        except InterruptedError:
            pass
again(s.bind, ("0.0.0.0", {PORT})); again(s.listen, 64)
print("READY", flush=True)
peers = set()
for i in range(n):
    c, peer = s.accept()  # blocking, interrupted over and over
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nlocal")
    c.close()
    peers.add(peer[0])
signal.setitimer(signal.ITIMER_REAL, 0)
# At 1 kHz: tens of interruptions at least (the handoff serves 200 in well under 0.1 s).
print("served", n, "peers", *sorted(peers), "signals", len(ticks) > 20, flush=True)
"""


def test_a_burst_of_stolen_connections_under_signals_loses_none(world: World) -> None:
    n = 200
    p = world.start([PY, "-c", PY_BURST_SERVER, str(n)])
    _ready(p)
    world.wait_stolen(p)
    assert world.burst(n, 10) == ["local"] * n
    code, out, err = _finish(p)
    assert code == 0, err
    assert out.split() == ["served", str(n), "peers", world.client.address, "signals", "True"]


def test_a_burst_of_stolen_connections_while_mirrord_is_interrupted_loses_none(
    world: World,
) -> None:
    """Each stolen connection is handed to the program's accept() by adding an fd to its
    table; mirrord's own threads are hit by signals meanwhile (interrupts.py): no accept
    returns a wrong fd, none is lost."""
    n = 200
    p = world.start([PY, "-c", PY_BURST_SERVER, str(n)],
                    env={**os.environ, "MIRRORD_ENGINE": "notify"})  # fmt: skip
    _ready(p)
    world.wait_stolen(p)
    with interrupting(p.pid) as storm:
        answers = world.burst(n, 10)
    assert answers == ["local"] * n
    code, out, err = _finish(p)
    assert code == 0, err
    assert storm.sent > 1000
    assert out.split()[:2] == ["served", str(n)]
    assert "Traceback" not in err


PY_UDP_BURST = """
import faulthandler, signal, socket, sys
faulthandler.dump_traceback_later(60, exit=True)  # a lost datagram would hang recvfrom
host, n = sys.argv[1], int(sys.argv[2])
ticks = []
signal.signal(signal.SIGALRM, lambda *a: ticks.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
bad = 0
for i in range(n):
    s.sendto(b"%d" % i, (host, 9999))
    data, addr = s.recvfrom(100)
    bad += data != b"echo:%d" % i or addr != (host, 9999)
signal.setitimer(signal.ITIMER_REAL, 0)
print("datagrams", n, "bad", bad, "signals", len(ticks) > 100, flush=True)
"""


def test_a_burst_of_datagrams_under_signals_loses_none(world: World) -> None:
    n = 500
    p = world.start([PY, "-c", PY_UDP_BURST, world.service.address, str(n)], steal=False)
    code, out, err = _finish(p, timeout=90)
    assert code == 0, err
    assert out.split() == ["datagrams", str(n), "bad", "0", "signals", "True"], err


# --- a static Go program --------------------------------------------------------------------


def test_a_static_go_server_under_signals(world: World, programs: dict[str, Path]) -> None:
    """podview-go counts SIGUSR1 (signal.Notify) while it serves stolen requests; a
    signal every 2 ms reaches its threads wherever they are, trapped calls included."""
    n = 30
    p = world.start([str(programs["podview-go"]), str(PORT), str(n)])
    assert p.stdout is not None
    while not p.stdout.readline().startswith("LISTENING"):
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
    world.wait_stolen(p)
    pid = _program_pid(p)
    stop = False

    def pester() -> None:
        while not stop:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                return
            time.sleep(0.002)

    import threading

    t = threading.Thread(target=pester)
    t.start()
    try:
        assert world.burst(n, 5) == ["local"] * n
    finally:
        stop = True
        t.join()
    code, out, err = _finish(p)
    assert code == 0, err
    assert out.count(f"SERVED peer={world.client.address}") == n, out
    signals = int(out.split("SIGNALS ")[1].split()[0])
    assert signals > 10, out
