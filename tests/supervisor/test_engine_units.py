"""Pure parts of the engines: which engine runs and why, restarted calls (inflight.py),
which thread a pending signal interrupts (sigwatch.py). No tracee."""

from __future__ import annotations

import errno

import pytest

from mirrord.supervisor.engine import EngineError, choose, kernel_version
from mirrord.supervisor.inflight import PARK_S, Inflight
from mirrord.supervisor.seccomp import Engine
from mirrord.supervisor.sigwatch import ERESTARTSYS, SigState, parse_status, takes_signal

# --- engine choice -------------------------------------------------------------------


def test_notify_is_the_default_on_a_recent_kernel() -> None:
    choice = choose({}, release="6.1.0-18-amd64")
    assert (choice.engine, choice.forced) == (Engine.NOTIFY, False)


def test_old_kernels_fall_back_to_ptrace_and_say_why() -> None:
    choice = choose({}, release="5.15.0-91-generic")
    assert choice.engine is Engine.PTRACE and not choice.forced
    assert "Linux 5.15" in choice.reason and "WAIT_KILLABLE_RECV" in choice.reason
    with pytest.raises(EngineError, match=r"Linux 5\.15"):
        choose({"MIRRORD_ENGINE": "notify"}, release="5.15.0")


def test_the_user_may_force_an_engine() -> None:
    assert choose({"MIRRORD_ENGINE": "ptrace"}, release="6.8").engine is Engine.PTRACE
    assert choose({"MIRRORD_ENGINE": " Notify "}, release="6.8").forced
    no_seccomp = choose({"MIRRORD_NO_SECCOMP": "1"}, release="6.8")
    assert (no_seccomp.engine, no_seccomp.seccomp) == (Engine.PTRACE, False)
    assert choose({}, release="6.8", seccomp_available=False).seccomp is False


def test_a_bad_engine_name_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match=r"MIRRORD_ENGINE='gdb': expected one of auto"):
        choose({"MIRRORD_ENGINE": "gdb"})


def test_kernel_versions_are_read_from_odd_release_strings() -> None:
    assert kernel_version("6.18.44-fc-v1252") == (6, 18)
    assert kernel_version("5.19") == (5, 19)
    assert kernel_version("garbage") == (0, 0)


# --- restarted calls -------------------------------------------------------------------

KEY = (100, 42, (3, 0x1000, 16, 0, 0, 0))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_restart_joins_running_work() -> None:
    table = Inflight()
    entry = table.start(KEY, nid=1, cancel_if_gone=False)
    assert table.interrupted(entry, 1) is False  # our -ERESTARTSYS: the work runs on
    assert table.newest(entry) == 0
    claim = table.claim(KEY, nid=2)
    assert claim.joined and claim.entry is entry and table.newest(entry) == 2
    assert table.answering(entry) == 2
    table.delivered(entry)
    assert len(table) == 0


def test_a_result_without_a_call_waits_for_the_restart() -> None:
    clock = Clock()
    table = Inflight(clock)
    entry = table.start(KEY, nid=1, cancel_if_gone=False)
    table.interrupted(entry, 1)
    assert table.answering(entry) == 0  # nobody to answer
    table.undelivered(entry, result=0)
    claim = table.claim(KEY, nid=5)
    assert not claim.joined and claim.entry is entry and entry.result == 0
    assert table.answering(entry) == 5
    # Parked results expire: a program that got EINTR may never call again.
    other = table.start((7, 7, ()), nid=9, cancel_if_gone=False)
    table.undelivered(other, result=1)
    clock.now += PARK_S + 1
    assert table.claim((7, 7, ()), nid=10).entry is None


def test_the_same_call_again_after_its_answer_is_a_new_call() -> None:
    """The program may repeat the identical call (same buffers) the moment it has the
    answer, before the loop thread marks the old one delivered."""
    table = Inflight()
    entry = table.start(KEY, nid=1, cancel_if_gone=False)
    assert table.answering(entry) == 1
    assert table.claim(KEY, nid=2).entry is None
    table.delivered(entry)


def test_a_wait_a_restart_joined_is_not_dropped() -> None:
    """The signal watch ends call 1 while its restart (call 2) joins the same wait on
    another thread: the wait now serves call 2 and must not be dropped."""
    table = Inflight()
    entry = table.start(KEY, nid=1, cancel_if_gone=True)
    assert table.claim(KEY, nid=2).joined
    assert table.interrupted(entry, 1) is False
    assert not entry.done and table.answering(entry) == 2


def test_waits_are_dropped_when_their_call_ends() -> None:
    table = Inflight()
    entry = table.start(KEY, nid=1, cancel_if_gone=True)
    assert table.interrupted(entry, 1) is True
    assert len(table) == 0 and entry.done
    table.undelivered(entry, result=True)  # a late result is not parked
    assert len(table) == 0


# --- signals ------------------------------------------------------------------------------


def state(**kw: int | str) -> SigState:
    base: dict[str, int | str] = {
        "tgid": 10, "pid": 10, "state": "D", "pending": 0, "shared": 0, "blocked": 0,
    }  # fmt: skip
    base.update(kw)
    return SigState(**base)  # type: ignore[arg-type]


SIGINT = 1 << 1
SIGTERM = 1 << 14


def test_a_signal_sent_to_the_thread_is_its_own() -> None:
    assert takes_signal(state(pending=SIGINT), None) == ERESTARTSYS
    assert takes_signal(state(pending=SIGINT, blocked=SIGINT), None) == 0


def test_a_waiting_leader_takes_process_signals() -> None:
    assert takes_signal(state(shared=SIGTERM), None) == ERESTARTSYS


def test_another_thread_waits_on_while_the_leader_takes_it() -> None:
    thread = state(pid=11, shared=SIGTERM)
    assert takes_signal(thread, state(state="S")) == 0
    # The leader blocks it: it may fall to us; EINTR never leaks ERESTARTSYS.
    assert takes_signal(thread, state(state="S", blocked=SIGTERM)) == errno.EINTR
    assert takes_signal(thread, state(state="Z")) == errno.EINTR


def test_a_group_stop_reaches_every_thread() -> None:
    assert takes_signal(state(pid=11), state(state="T")) == ERESTARTSYS
    assert takes_signal(state(pid=11, state="T"), state(state="T")) == 0


def test_status_is_parsed_as_proc_writes_it() -> None:
    text = (
        "Name:\tpython3\nState:\tD (disk sleep)\nTgid:\t1234\nPid:\t1235\n"
        "SigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\n"
        "SigBlk:\t0000000000000002\nSigIgn:\t0000000001001000\n"
    )
    assert parse_status(text) == SigState(1234, 1235, "D", 0, SIGTERM, SIGINT)
