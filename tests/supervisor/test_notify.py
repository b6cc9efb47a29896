"""The notify engine's machinery through SupervisedRun, with a test-only Feature
(probe_notify.py): the same tracee under the notify and the ptrace engines."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mirrord.supervisor.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_USER_NOTIF,
    Rule,
    build_filter,
    run_filter,
)
from tests.supervisor.tracee_parts import SPINNER

PROBE = Path(__file__).with_name("probe_notify.py")

TRACEE = (
    SPINNER
    + r"""
libc = ctypes.CDLL(None)
# A signal while the answer is being prepared: handled once, after the answer.
alarms = []
signal.signal(signal.SIGALRM, lambda *a: alarms.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.1)
before = counter
t0 = time.monotonic()
pid = libc.getpid()  # deferred 0.3 s by the probe; ctypes drops the GIL
waited = time.monotonic() - t0
during = counter - before
stop = True; t.join()
time.sleep(0.05)
print("getpid", pid, "waited", round(waited, 1), "other thread ran", during > 50)
print("alarms", len(alarms))
print("getppid", os.getppid())
fd = os.open("/magic/path", os.O_RDONLY | os.O_CLOEXEC)
cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
print("magic", os.read(fd, 100).decode().strip(), cloexec)
fd2 = libc.open(b"/magic/path", os.O_RDONLY)  # os.open would add O_CLOEXEC itself
print("inheritable", not fcntl.fcntl(fd2, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd2 == fd + 1)
print("normal open", open("/etc/hostname").read() == open("/etc/hostname").read())
# Many threads at once, each making notified calls.
errors = []
def worker():
    for _ in range(200):
        if os.getppid() != 777:
            errors.append(1)
ths = [threading.Thread(target=worker) for _ in range(8)]
[x.start() for x in ths]; [x.join() for x in ths]
print("threads ok", not errors)
child = os.fork()
if child == 0:
    os._exit(0 if os.getppid() == 777 else 1)
print("child", os.waitpid(child, 0)[1])
if os.environ.get("PROBE_ENGINE") != "ptrace":
    me = int(os.readlink("/proc/self"))  # getpid is the probe's
    # An fd of the supervisor's installed as the call's result (think accept).
    fd3 = libc.getsid(4242)
    print("installed", os.read(fd3, 100).decode().strip())
    # A call that natively blocks, hit by a signal with SA_RESTART: the call restarts
    # and joins the work in progress, which runs once. (Python runs its handler only
    # once the ctypes call returns; the EINTR case below shows the promptness.)
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(time.monotonic()))
    signal.siginterrupt(signal.SIGUSR1, False)
    threading.Timer(0.2, os.kill, (me, signal.SIGUSR1)).start()
    t0 = time.monotonic()
    r = libc.getpgid(4242)
    print("restarted", r, "handled", len(got))
    # Without SA_RESTART (Python's default), the call fails with EINTR at once.
    signal.signal(signal.SIGUSR2, lambda *a: got.append(1))
    threading.Timer(0.2, os.kill, (me, signal.SIGUSR2)).start()
    t0 = time.monotonic()
    lc = ctypes.CDLL(None, use_errno=True)
    r = lc.getpgid(4242)
    print("eintr", r, ctypes.get_errno() == 4, time.monotonic() - t0 < 0.6)
    os.chdir("/magic-dir")
    print("chdir", os.getcwd() == os.environ["TARGET_DIR"], open("inside.txt").read().strip())
"""
)


def test_notify_filter_has_no_ret_trace() -> None:
    """A RET_TRACE rule fails its syscall with ENOSYS once a debugger that did not ask for
    seccomp events traces the program: the notify engine's filter has none, not even for
    foreign-ABI calls."""
    rules = [Rule(39), Rule(110)]
    prog = build_filter(rules)
    assert run_filter(prog, nr=39) == SECCOMP_RET_USER_NOTIF
    assert run_filter(prog, nr=1) == SECCOMP_RET_ALLOW
    assert run_filter(prog, nr=39, arch=0x40000003) == SECCOMP_RET_USER_NOTIF
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    rets = [k & 0xFFFF0000 for code, _jt, _jf, k in insns if code == 0x06]
    assert SECCOMP_RET_TRACE not in rets
    fallback = build_filter(rules, notify=False)
    assert run_filter(fallback, nr=39) == SECCOMP_RET_TRACE | 39


NOTIFY_ONLY = ["installed from our pipe", "restarted 1001 handled 1", "eintr -1 True True"]


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_probe(engine: str, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("from the magic file\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside.txt").write_text("relative works\n")
    env = {"PATH": "/usr/bin:/bin", "PROBE_ENGINE": engine, "TARGET_DIR": str(tmp_path / "dir")}
    r = subprocess.run(
        [sys.executable, str(PROBE), str(target), str(tmp_path / "dir"), "--",
         "/usr/bin/python3", "-c", TRACEE],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    expected = [
        "getpid 4242 waited 0.3 other thread ran True",
        "alarms 1",
        "getppid 777",
        "magic from the magic file True",
        "inheritable True True",
        "normal open True",
        "threads ok True",
        "child 0",
    ]
    if engine == "notify":
        expected += [*NOTIFY_ONLY, "chdir True relative works"]
    assert r.stdout.splitlines() == expected, r.stderr
    m = re.search(
        r"probe stops=(\d+) notifications=(\d+) notified=\[(\w+)\] getpgid_starts=(\d)",
        r.stderr,
    )
    assert m, r.stderr
    stops, notifications = int(m[1]), int(m[2])
    if engine == "notify":
        assert notifications > 1600 and m[3] == "True"  # 8 threads x 200 getppid and more
        assert m[4] == "2"  # one per getpgid call, not per restart
    else:
        assert notifications == 0 and stops > 1600 and m[3] == "False"


KILLED_WHILE_WAITING = r"""
import ctypes, os, signal, threading, time
def killer():
    time.sleep(0.1)
    # While getpid waits for its deferred answer (the probe fakes getpid: ask /proc).
    os.kill(int(os.readlink("/proc/self")), signal.SIGKILL)
threading.Thread(target=killer).start()
ctypes.CDLL(None).getpid()
print("not reached")
"""


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_program_killed_while_its_answer_is_deferred(engine: str, tmp_path: Path) -> None:
    """The answer comes after the thread is gone: the engine drops it and ends with the
    program's own status, nothing raised."""
    env = {"PATH": "/usr/bin:/bin", "PROBE_ENGINE": engine}
    r = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path / "unused"), str(tmp_path), "--",
         "/usr/bin/python3", "-c", KILLED_WHILE_WAITING],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 128 + 9, r.stderr
    assert "not reached" not in r.stdout
    assert "Traceback" not in r.stderr and "failed" not in r.stderr, r.stderr
