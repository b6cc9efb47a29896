"""The tracer's machinery under a test-only policy (probe_policy.py): deferred answers
while other threads run, exit hooks, scratch buffers below SP, restarted syscalls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.supervisor.tracee_parts import SPINNER

PROBE = Path(__file__).with_name("probe_policy.py")

TRACEE = (
    SPINNER
    + r"""
before = counter
t0 = time.monotonic()
pid = ctypes.CDLL(None).getpid()  # deferred 0.3 s by the probe; ctypes drops the GIL
waited = time.monotonic() - t0
during = counter - before
stop = True; t.join()
print("getpid", pid)
print("waited", round(waited, 1))
print("other thread ran", during > 50)
print("getppid", os.getppid())
print("uname", os.uname().nodename)

# read() rewritten to a scratch buffer; a SIGALRM (SA_RESTART) interrupts it first.
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, False)
r, w = os.pipe()
def late_write():
    time.sleep(0.4)
    os.write(w, b"hello from the pipe")
threading.Thread(target=late_write).start()
signal.setitimer(signal.ITIMER_REAL, 0.1)
data = os.read(r, 1 << 20)
print("read", data.decode())
"""
)


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "full-stops"])
def test_probe_policy(seccomp: bool) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    if not seccomp:
        env["PROBE_NO_SECCOMP"] = "1"
    r = subprocess.run(
        [sys.executable, str(PROBE), "--", "/usr/bin/python3", "-c", TRACEE],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [
        "getpid 4242",
        "waited 0.3",
        "other thread ran True",
        "getppid 777",
        "uname scratch-ok",
        "read HELLO FROM THE PIPE",
    ], r.stderr
