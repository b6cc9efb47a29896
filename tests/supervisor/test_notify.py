"""Seccomp user notifications (notify.py) through the tracer, with a test-only policy
(probe_notify.py): the same tracee under notifications and under the ptrace fallback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mirrord.supervisor.seccomp import (
    SECCOMP_RET_TRACE,
    SECCOMP_RET_USER_NOTIF,
    Kind,
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
"""
)


def test_filter_returns_user_notif_or_trace() -> None:
    rules = [Rule(39, Kind.NOTIFY), Rule(110)]
    prog = build_filter(rules)
    assert run_filter(prog, nr=39) == SECCOMP_RET_USER_NOTIF
    assert run_filter(prog, nr=110) == SECCOMP_RET_TRACE | 110
    fallback = build_filter(rules, notify=False)
    assert run_filter(fallback, nr=39) == SECCOMP_RET_TRACE | 39


@pytest.mark.parametrize("notify", [True, False], ids=["notifications", "ptrace-fallback"])
def test_probe_notify(notify: bool, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("from the magic file\n")
    env = {"PATH": "/usr/bin:/bin"}
    if not notify:
        env["PROBE_NO_NOTIFY"] = "1"
    r = subprocess.run(
        [sys.executable, str(PROBE), str(target), "--", "/usr/bin/python3", "-c", TRACEE],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "getpid 4242 waited 0.3 other thread ran True",
        "alarms 1",
        "getppid 777",
        "magic from the magic file True",
        "inheritable True True",
        "normal open True",
        "threads ok True",
        "child 0",
    ], r.stderr
    m = re.search(r"probe stops=(\d+) notifications=(\d+) notified=\[(\w+)\]", r.stderr)
    assert m, r.stderr
    stops, notifications = int(m[1]), int(m[2])
    if notify:
        assert notifications > 1600 and m[3] == "True"  # 8 threads x 200 getppid and more
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


@pytest.mark.parametrize("notify", [True, False], ids=["notifications", "ptrace-fallback"])
def test_program_killed_while_its_answer_is_deferred(notify: bool, tmp_path: Path) -> None:
    """The answer comes after the thread is gone: the tracer drops it and ends with the
    program's own status, nothing raised."""
    env = {"PATH": "/usr/bin:/bin"}
    if not notify:
        env["PROBE_NO_NOTIFY"] = "1"
    r = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path / "unused"), "--", "/usr/bin/python3", "-c",
         KILLED_WHILE_WAITING],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 128 + 9, r.stderr
    assert "not reached" not in r.stdout
    assert "Traceback" not in r.stderr and "failed" not in r.stderr, r.stderr
