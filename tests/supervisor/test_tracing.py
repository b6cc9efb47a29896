"""The supervisor on its own (no agent) tracing real programs: `python -m mirrord.supervisor`."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUP = [sys.executable, "-m", "mirrord.supervisor"]
PY = "/usr/bin/python3"


def traced(
    *cmd: str, hostname: str | None = "pod-host", seccomp: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    args = list(SUP)
    if hostname:
        args += ["--hostname", hostname]
    if not seccomp:
        args.append("--no-seccomp")
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*args, "--", *cmd], capture_output=True, text=True, timeout=60, **kw
    )


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "full-stops"])
def test_hostname_is_rewritten_for_every_kind_of_program(seccomp: bool) -> None:
    script = (
        "uname -n; busybox hostname; hostname; "
        f"{PY} -c 'import os, socket; print(os.uname().nodename); print(socket.gethostname())'"
    )
    r = traced("sh", "-c", script, seccomp=seccomp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["pod-host"] * 5


def test_static_programs_see_the_hostname(programs: dict[str, Path]) -> None:
    for name in ("envprint", "envprint-go"):
        r = traced(str(programs[name]))
        assert r.returncode == 0, r.stderr
        assert "HOSTNAME_UNAME=pod-host" in r.stdout.splitlines(), name


def test_without_the_hostname_feature_uname_is_untouched() -> None:
    r = traced("uname", "-n", hostname=None)
    assert r.stdout.strip() == os.uname().nodename


@pytest.mark.parametrize(
    "script",
    ["exit 0", "exit 7", "exit 255", "kill -SEGV $$", "kill -TERM $$", "kill -KILL $$"],
)
def test_exit_status_equals_the_native_run(script: str) -> None:
    native = subprocess.run(["sh", "-c", script], timeout=30)
    r = traced("sh", "-c", script)
    assert r.returncode == native.returncode
    assert "core dumped" not in r.stderr


def test_exec_failures_are_clear(tmp_path: Path) -> None:
    r = traced("definitely-not-a-command-xyz")
    assert r.returncode == 127
    assert "definitely-not-a-command-xyz: command not found" in r.stderr
    not_exec = tmp_path / "data.txt"
    not_exec.write_text("hello")
    r = traced(str(not_exec))
    assert (r.returncode, r.stderr.strip()) == (
        126,
        f"mirrord: {not_exec}: permission denied (not an executable file)",
    )
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    r = traced(str(garbage))
    assert (r.returncode, r.stderr.strip()) == (126, f"mirrord: {garbage}: Exec format error")


def test_stdin_and_stdout_stay_the_programs() -> None:
    data = "".join(f"line {i}\n" for i in range(10000))
    r = traced("cat", input=data)
    assert r.returncode == 0
    assert r.stdout == data


def test_a_hundred_children_that_exec(programs: dict[str, Path]) -> None:
    r = traced(str(programs["forker"]), "100", "/bin/true")
    assert r.returncode == 0, r.stdout + r.stderr
    r = traced("sh", "-c", "for i in $(seq 100); do uname -n; done")
    assert r.stdout.split() == ["pod-host"] * 100


def test_twenty_threads_all_traced(programs: dict[str, Path]) -> None:
    r = traced(str(programs["threads"]))
    assert r.returncode == 0, r.stderr
    names = [line for line in r.stdout.split() if line]
    assert len(names) == 20
    assert set(names) == {"pod-host"}


def test_posix_spawn_and_vfork_children_stay_traced(programs: dict[str, Path]) -> None:
    # The children run `uname -n`: if they escaped tracing they would print the real name.
    r = traced(str(programs["spawner"]), "/bin/uname", "-n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("pod-host") == 2
    assert os.uname().nodename not in r.stdout.replace("pod-host", "")


def test_python_threads_and_subprocesses() -> None:
    code = (
        "import os, threading, subprocess\n"
        "out = []\n"
        "f = lambda: out.append(os.uname().nodename)\n"
        "ts = [threading.Thread(target=f) for _ in range(20)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(set(out), len(out))\n"
        "print(subprocess.run(['uname', '-n'], capture_output=True, text=True).stdout.strip())\n"
    )
    r = traced(PY, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["{'pod-host'} 20", "pod-host"]


def test_io_uring_is_refused_so_programs_fall_back() -> None:
    code = (
        "import ctypes, ctypes.util\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "rc = libc.syscall(425, 8, params)\n"
        "print(rc, ctypes.get_errno())\n"
    )
    r = traced(PY, "-c", code)
    assert r.stdout.split() == ["-1", "38"]  # ENOSYS


def test_sigterm_to_mirrord_reaches_the_program() -> None:
    p = subprocess.Popen([*SUP, "--", "sleep", "30"], stderr=subprocess.PIPE)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == -signal.SIGTERM
    # The program got it (not only mirrord): no sleep is left behind.
    left = subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True)
    assert left.returncode == 1


def _read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {buf!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_interactive_program_through_a_pty_gets_ctrl_c_once(programs: dict[str, Path]) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(
            sys.executable, [*SUP, "--hostname", "pod-host", "--", str(programs["interactive"])]
        )
    try:
        _read_until(fd, b"name? ")
        os.write(fd, b"bob\n")
        out = _read_until(fd, b"hello bob")
        out += _read_until(fd, b"isatty")
        assert b"isatty=True" in out or b"isatty=1" in out, out
        time.sleep(0.3)
        os.write(fd, b"\x03")  # Ctrl-C: the terminal signals the whole foreground group
        out = _read_until(fd, b"got SIGINT")
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, (status, out)
    assert out.count(b"got SIGINT") == 1
