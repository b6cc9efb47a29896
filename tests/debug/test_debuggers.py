"""Debuggers and tracers on programs under mirrord (the notify engine leaves the program's
ptrace slot free): gdb, dlv and strace run through `mirrord exec`, and gdb/dlv attach
from outside to a program already running under it. In each case a breakpoint is hit,
stepping works, and the debugged program still sees the pod: its environment, hostname,
a pod-only file, a pod-only name, an outgoing connection and a stolen request
(tests/programs/podview.c and podview-go; the world: debug_world.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.debug.debug_world import PORT, DebugWorld, dworld  # noqa: F401 (fixture)
from tests.features.incoming.exec_world import Running
from tests.features.incoming.incoming_helpers import mirrord_rules

pytestmark = pytest.mark.skipif(
    not (shutil.which("gdb") and shutil.which("dlv") and shutil.which("strace")),
    reason="gdb, dlv (Debian's delve) and strace are installed by `make test`",
)


def served_view(world: DebugWorld, log: str) -> None:
    """view() printed the pod's view at start and again while serving a stolen request
    from the client pod, answered with the real peer."""
    lines = log.splitlines()
    for want in world.expected_view():
        assert lines.count(want) == 2, (want, log)
    assert f"SERVED peer={world.client.address}" in log, log


def steal_and_request(session: Running, world: DebugWorld) -> str:
    session.wait_log("LISTENING", 60)
    session.wait_subscribed("steal", PORT)
    return world.request()


def test_gdb_runs_the_program(dworld: DebugWorld, programs: dict[str, Path]) -> None:  # noqa: F811
    s = dworld.start(
        ["gdb", "-batch", "-ex", "break checkpoint", "-ex", "run", "-ex", "next", "-ex", "bt",
         "-ex", "continue", "--args", str(programs["podview"]), "8080", "1"]
    )  # fmt: skip
    assert steal_and_request(s, dworld) == "local"
    assert s.wait() == 0, s.log()
    log = s.log()
    assert "Breakpoint 1, checkpoint (step=1) at" in log
    assert "19\t    return doubled;" in log  # `next` stepped to the following line
    assert "in main (argc=3" in log  # bt
    served_view(dworld, log)
    assert "exited normally" in log


DLV_SCRIPT = """break main.checkpoint
continue
next
stack
continue
exit
"""


def test_dlv_runs_a_static_go_program(
    dworld: DebugWorld,  # noqa: F811
    programs: dict[str, Path],
    tmp_path: Path,
) -> None:
    script = tmp_path / "dlv.init"
    script.write_text(DLV_SCRIPT)
    s = dworld.start(
        ["dlv", "exec", "--allow-non-terminal-interactive", "--init", str(script),
         str(programs["podview-go"]), "--", "8080", "1"]
    )  # fmt: skip
    assert steal_and_request(s, dworld) == "local"
    assert s.wait() == 0, s.log()
    log = s.log()
    hit = re.search(r"> main\.checkpoint\(\) podview/main\.go:(\d+) \(hits goroutine", log)
    assert hit, log
    assert f"> main.checkpoint() podview/main.go:{int(hit[1]) + 1} " in log  # stepped
    assert "in main.main" in log
    served_view(dworld, log)
    assert "has exited with status 0" in log


def test_strace_follows_the_program_and_its_pod_answers(
    dworld: DebugWorld,  # noqa: F811
    programs: dict[str, Path],
) -> None:
    s = dworld.start(
        ["strace", "-f", "-e", "trace=uname,openat,connect,accept",
         str(programs["podview"]), "8080", "1"]
    )  # fmt: skip
    assert steal_and_request(s, dworld) == "local"
    assert s.wait() == 0, s.log()
    log = s.log()
    # strace shows the calls as the program got them: our answers.
    assert f'uname({{sysname="Linux", nodename="{dworld.target.hostname}", ...}}) = 0' in log
    assert 'openat(AT_FDCWD, "/srv/app/config.yaml", O_RDONLY) = 3' in log
    assert f'sin_addr=inet_addr("{dworld.service.address}")' in log
    assert f'sin_addr=inet_addr("{dworld.client.address}")' in log  # accept's real peer
    served_view(dworld, log)
    assert "+++ exited with 0 +++" in log


def _attach(argv: list[str], ready: str, answers: str = "") -> subprocess.Popen[str]:
    """A debugger started outside mirrord; returns once it printed `ready`. `answers`:
    what it reads from its stdin (dlv asks whether to kill an attached process)."""
    dbg = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True
    )
    assert dbg.stdin is not None
    dbg.stdin.write(answers)
    dbg.stdin.close()
    assert dbg.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while ready not in seen:
        line = dbg.stdout.readline()
        if not line or time.monotonic() > deadline:
            dbg.kill()
            raise AssertionError(f"the debugger never said {ready!r}:\n{seen}")
        seen += line
    dbg.seen = seen  # type: ignore[attr-defined]
    return dbg


def _rest(dbg: subprocess.Popen[str]) -> str:
    """Everything the debugger printed, once it exited."""
    assert dbg.stdout is not None
    out = dbg.stdout.read()
    dbg.wait(60)
    return dbg.seen + out  # type: ignore[attr-defined, no-any-return]


def _pid(log: str) -> int:
    line = next(x for x in log.splitlines() if x.startswith("LISTENING pid="))
    return int(line.split("=", 1)[1])


def test_gdb_attaches_to_a_program_running_under_mirrord_and_detaches(
    dworld: DebugWorld,  # noqa: F811
    programs: dict[str, Path],
) -> None:
    s = dworld.start([str(programs["podview"]), "8080", "2"])
    try:
        s.wait_subscribed("steal", PORT)
        pid = _pid(s.wait_log("LISTENING", 60))
        gdb = _attach(
            ["gdb", "-batch", "-p", str(pid), "-ex", "break handle", "-ex", "continue",
             "-ex", "next", "-ex", "bt", "-ex", "detach"],
            "Breakpoint 1 at",
        )  # fmt: skip
        time.sleep(0.5)  # `continue` issued
        assert dworld.request() == "local"  # hits the breakpoint, then runs on
        out = _rest(gdb)
        assert "Breakpoint 1, handle (conn=" in out, out
        assert "75\t    view();" in out, out  # `next` stepped
        assert "in main (argc=3" in out, out
        assert f"[Inferior 1 (process {pid}) detached]" in out, out
        # Detached: the session goes on, the second request is served as before.
        assert dworld.request() == "local"
        assert s.wait() == 0, s.log()
        served_view_twice = s.log().count(f"SERVED peer={dworld.client.address}")
        assert served_view_twice == 2, s.log()
    finally:
        s.kill()


DLV_ATTACH = """break main.handle
continue
next
stack
clearall
exit
"""


def test_dlv_attaches_to_a_go_program_running_under_mirrord(
    dworld: DebugWorld,  # noqa: F811
    programs: dict[str, Path],
    tmp_path: Path,
) -> None:
    script = tmp_path / "attach.init"
    script.write_text(DLV_ATTACH)
    s = dworld.start([str(programs["podview-go"]), "8080", "2"])
    try:
        s.wait_subscribed("steal", PORT)
        pid = _pid(s.wait_log("LISTENING", 60))
        dlv = _attach(
            ["dlv", "attach", str(pid), "--allow-non-terminal-interactive", "--init", str(script)],
            "Breakpoint 1 set at",
            answers="n\n",  # "Would you like to kill the process?"
        )
        time.sleep(0.5)
        assert dworld.request() == "local"
        out = _rest(dlv)
        assert "> main.handle() podview/main.go:" in out, out
        assert "in main.main" in out, out
        assert "Would you like to kill the process? [Y/n]" in out, out
        assert dworld.request() == "local"  # the program goes on after the detach
        assert s.wait() == 0, s.log()
        assert s.log().count(f"SERVED peer={dworld.client.address}") == 2, s.log()
        for want in dworld.expected_view():
            assert s.log().splitlines().count(want) == 3, (want, s.log())
    finally:
        s.kill()


def test_a_debugger_that_kills_the_program_ends_the_session_cleanly(
    dworld: DebugWorld,  # noqa: F811
    programs: dict[str, Path],
) -> None:
    s = dworld.start(
        ["gdb", "-batch", "-ex", "break handle", "-ex", "run", "-ex", "kill",
         "--args", str(programs["podview"]), "8080", "1"]
    )  # fmt: skip
    s.wait_log("LISTENING", 60)
    s.wait_subscribed("steal", PORT)
    dworld.request(timeout=10)  # hits the breakpoint; gdb kills the program
    assert s.wait() == 0, s.log()  # gdb's own status
    assert "[Inferior 1 (process" in s.log() and "killed]" in s.log(), s.log()
    assert mirrord_rules(dworld.target) == []
    assert dworld.request() == "pod"  # the target's own server has its traffic back
