"""The seccomp program, evaluated the way the kernel evaluates it (pure, no tracee)."""

import errno

import pytest

from mirrord.supervisor.policy import build_policy
from mirrord.supervisor.seccomp import (
    FOREIGN_ABI,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_USER_NOTIF,
    Engine,
    Kind,
    Rule,
    build_filter,
    run_filter,
)
from mirrord.supervisor.syscalls import AUDIT_ARCH_I386, CLONE_UNTRACED, NR, X32_SYSCALL_BIT


@pytest.fixture
def prog() -> bytes:
    return build_filter(build_policy(hostname="pod").rules)


@pytest.fixture
def ptrace_prog() -> bytes:
    return build_filter(build_policy(hostname="pod", engine=Engine.PTRACE).rules, notify=False)


def test_uname_is_a_user_notification(prog: bytes) -> None:
    assert run_filter(prog, nr=NR["uname"]) == SECCOMP_RET_USER_NOTIF


def test_ptrace_engine_stops_uname_with_its_number_as_data(ptrace_prog: bytes) -> None:
    assert run_filter(ptrace_prog, nr=NR["uname"]) == SECCOMP_RET_TRACE | NR["uname"]


def test_untrapped_syscalls_run_without_a_stop(prog: bytes, ptrace_prog: bytes) -> None:
    for name in ("read", "write", "openat", "connect", "mmap"):
        assert run_filter(prog, nr=NR[name]) == SECCOMP_RET_ALLOW, name
    # The notify engine hears of every exec (its cached memory fds); ptrace has events.
    assert run_filter(prog, nr=NR["execve"]) == SECCOMP_RET_USER_NOTIF
    assert run_filter(ptrace_prog, nr=NR["execve"]) == SECCOMP_RET_ALLOW


def test_the_uts_calls_are_trapped_with_or_without_the_hostname_feature() -> None:
    """uname shows what sethostname set in the run; sethostname never reaches the host."""
    for hostname in ("pod", None):
        prog = build_filter(build_policy(hostname=hostname).rules)
        for name in ("uname", "sethostname", "setdomainname"):
            assert run_filter(prog, nr=NR[name]) == SECCOMP_RET_USER_NOTIF, (hostname, name)


def test_io_uring_setup_fails_with_enosys_without_a_stop(prog: bytes) -> None:
    assert run_filter(prog, nr=NR["io_uring_setup"]) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_ptrace_engine_stops_clone_only_when_it_would_escape_tracing(ptrace_prog: bytes) -> None:
    prog = ptrace_prog
    plain_fork = 0x01200011  # CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD
    assert run_filter(prog, nr=NR["clone"], args=(plain_fork,)) == SECCOMP_RET_ALLOW
    untraced = plain_fork | CLONE_UNTRACED
    assert run_filter(prog, nr=NR["clone"], args=(untraced,)) == SECCOMP_RET_TRACE | NR["clone"]
    # The test clobbers the accumulator: the syscalls after clone must still match.
    assert run_filter(prog, nr=NR["uname"]) == SECCOMP_RET_TRACE | NR["uname"]
    assert run_filter(prog, nr=NR["clone3"]) == SECCOMP_RET_TRACE | NR["clone3"]


def test_notify_engine_leaves_clone_alone(prog: bytes) -> None:
    # Its filter is inherited by every child whatever the flags: nothing to strip.
    untraced = 0x01200011 | CLONE_UNTRACED
    assert run_filter(prog, nr=NR["clone"], args=(untraced,)) == SECCOMP_RET_ALLOW
    assert run_filter(prog, nr=NR["clone3"]) == SECCOMP_RET_ALLOW


def test_x32_syscalls_are_refused(prog: bytes) -> None:
    # x32's uname would otherwise look like a plain x86_64 syscall with a high bit.
    assert run_filter(prog, nr=X32_SYSCALL_BIT | 63) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_foreign_arch_is_never_read_as_x86_64(prog: bytes, ptrace_prog: bytes) -> None:
    # i386 nr 5 is open; as x86_64 it would be fstat. It must stop as FOREIGN_ABI (the
    # notify engine reads the arch from the notification).
    for nr in (5, 63):
        assert run_filter(ptrace_prog, nr=nr, arch=AUDIT_ARCH_I386) == (
            SECCOMP_RET_TRACE | FOREIGN_ABI
        )
        assert run_filter(prog, nr=nr, arch=AUDIT_ARCH_I386) == SECCOMP_RET_USER_NOTIF


def test_many_rules_need_no_long_jumps() -> None:
    rules = [Rule(nr) for nr in range(0, 400)]
    prog = build_filter(rules, notify=False)
    assert run_filter(prog, nr=399) == SECCOMP_RET_TRACE | 399
    assert run_filter(prog, nr=401) == SECCOMP_RET_ALLOW


def test_bad_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="two seccomp rules"):
        build_filter([Rule(1), Rule(1, Kind.ERRNO, errno=1)])
    with pytest.raises(ValueError, match="out of range"):
        build_filter([Rule(FOREIGN_ABI)])


def test_feature_tables_one_shape_merged_per_engine() -> None:
    """Every feature is a {syscall: Trap} table; build_policy keeps the rules that apply to
    the engine, refuses a syscall claimed twice, gathers handlers and fast checks."""
    from mirrord.supervisor.actions import Allow
    from mirrord.supervisor.policy import Feature, trapped

    def handler(sc: object, mem: object) -> Allow:
        return Allow()

    def fast(tid: int, args: tuple[int, ...], mem: object) -> bool:
        return True

    accept = NR["accept"]
    table = {
        NR["openat"]: trapped(NR["openat"], handler, fast=fast),  # type: ignore[arg-type]
        accept: trapped(
            accept,
            handler,  # type: ignore[arg-type]
            Rule(accept, arg_nonzero=1, engine=Engine.PTRACE),
            Rule(accept, engine=Engine.NOTIFY),
        ),
    }
    for engine in (Engine.NOTIFY, Engine.PTRACE):
        policy = build_policy(hostname=None, features=[Feature("f", table)], engine=engine)
        (rule,) = [r for r in policy.rules if r.nr == accept]
        assert rule.engine is engine
        assert policy.handlers[NR["openat"]] is handler and NR["openat"] in policy.fast
    clash = Feature("g", {NR["uname"]: trapped(NR["uname"], handler)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="claimed by both core and g"):
        build_policy(hostname=None, features=[clash])
