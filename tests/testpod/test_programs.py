"""The test programs build, and behave as specified natively and inside a pod."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirrord.testpod import Network


def _run(
    argv: list[str | Path], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], env=env or {}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("name", ["envprint", "envprint-go"])
def test_envprint(programs: dict[str, Path], name: str) -> None:
    res = _run([programs[name]], env={"B": "2", "A": "1=x"})
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"A=1=x\nB=2\nHOSTNAME_UNAME={os.uname().nodename}\n"


def test_static_binaries(programs: dict[str, Path]) -> None:
    for name, path in programs.items():
        if path.suffix == ".py":
            continue
        head = path.read_bytes()[:4096]
        assert head.startswith(b"\x7fELF")
        # Statically linked: no program interpreter (PT_INTERP -> ld-linux) to name.
        assert b"ld-linux" not in head, name


def test_forker_threads_spawner_exitwith(programs: dict[str, Path]) -> None:
    res = _run([programs["forker"], "20", "/bin/true"])
    assert (res.returncode, res.stdout) == (0, "ok=20 of 20\n")
    assert _run([programs["forker"], "3", "/bin/false"]).returncode == 1
    res = _run([programs["threads"]])
    assert res.returncode == 0 and res.stdout.endswith("all-equal=yes\n")
    assert res.stdout.count(f": {os.uname().nodename}\n") == 20
    res = _run([programs["spawner"], programs["exitwith"], "code", "7"])
    assert res.stdout == "posix_spawn=7\nvfork=7\n"
    assert _run([programs["exitwith"], "code", "42"]).returncode == 42
    assert _run([programs["exitwith"], "signal", "15"]).returncode == -signal.SIGTERM


def test_interactive_on_a_pty(programs: dict[str, Path]) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, str(programs["interactive"])])
    out = b""

    def read_until(marker: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + 10
        while marker not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 1024)

    read_until(b"name? ")
    os.write(fd, b"pod\n")
    read_until(b"waiting for SIGINT")
    os.write(fd, b"\x03")  # ^C on the terminal: SIGINT to the foreground group
    read_until(b"got SIGINT")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert b"hello pod" in out and b"isatty=yes" in out and b"got SIGINT" in out
    assert os.waitstatus_to_exitcode(status) == 130


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_envprint_inside_a_pod(programs: dict[str, Path], network: Network) -> None:
    pod = network.add_pod("envpod-1", env={"POD": "yes"}, argv=[str(programs["envprint-go"])])
    # A short-lived main program: its output lands in the pod's log.
    deadline = time.monotonic() + 5
    while "HOSTNAME_UNAME" not in pod.read_log() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pod.read_log().splitlines() == [
        "POD=yes",
        "HOSTNAME_OS=envpod-1",
        "HOSTNAME_UNAME=envpod-1",
    ]
    res = pod.run([str(programs["threads"])])
    assert res.stdout.count(b": envpod-1\n") == 20
