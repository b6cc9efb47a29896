"""The tracing loop: one thread, one `waitpid(-1, __WALL)`, every ptrace request.

Rules this loop keeps (DESIGN.md):
- Every ptrace request comes from the thread that seized the program (ptrace is per
  thread), so `Tracer.run` forks, seizes and loops on one thread.
- At most one GETREGS and one SETREGS per stop; tracee memory through
  process_vm_readv/writev (never word-by-word pokes).
- PTRACE_SEIZE, not TRACEME: group-stops are told apart from signals
  (PTRACE_EVENT_STOP) and parked with PTRACE_LISTEN, so job control still works.
- A new child's first stop can arrive before its parent's fork event; it is held until
  the event names it, so per-process state can be copied before the child runs.
- The run ends when no traced task is left (like `strace -f`); the exit status is the
  first program's.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mirrord.supervisor import ptrace_ops as pt
from mirrord.supervisor.handlers import Allow, Fake, Policy, Syscall
from mirrord.supervisor.seccomp import FOREIGN_ABI, Kind, build_filter
from mirrord.supervisor.spawn import SpawnError, read_exec_failure, spawn_traced

log = logging.getLogger("mirrord.supervisor")

WALL = 0x40000000  # __WALL: threads and clone children too
WNOTHREAD = 0x20000000  # __WNOTHREAD: only our own children/tracees, not the agent's
U64 = (1 << 64) - 1
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
SYSCALL_TRAP = signal.SIGTRAP | 0x80
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


@dataclass(frozen=True)
class ExitStatus:
    """How the first program ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @property
    def shell_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 1


class _Mem:
    __slots__ = ("tid",)

    def __init__(self, tid: int) -> None:
        self.tid = tid

    def read(self, addr: int, size: int) -> bytes:
        return pt.read_mem(self.tid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        pt.write_mem(self.tid, addr, data)


@dataclass
class _Task:
    tid: int
    started: bool = False  # its first (attach) stop has been seen
    in_syscall: bool = False  # full-stop fallback: entry seen, exit pending
    fake_ret: int | None = None  # full-stop fallback: rax to set at the exit stop


@dataclass
class Stats:
    stops: int = 0
    syscalls: dict[str, int] = field(default_factory=dict)


class Tracer:
    def __init__(
        self,
        policy: Policy,
        *,
        use_seccomp: bool = True,
        on_started: Callable[[int], None] | None = None,
        on_main_stopped: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy
        self.use_seccomp = use_seccomp
        self.on_started = on_started
        self.on_main_stopped = on_main_stopped
        self.tasks: dict[int, _Task] = {}
        self.expected: set[int] = set()  # announced by a fork event, first stop not seen
        self.held: set[int] = set()  # first stop seen before the fork event
        self.main_pid = 0
        self.main_status: ExitStatus | None = None
        self.stats = Stats()
        self._trapped = policy.trapped()
        self._foreign_warned = False
        self._exec_err_fd: int | None = None

    # --- public --------------------------------------------------------------------

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> ExitStatus:
        """Start the program and trace it and its descendants until all have exited."""
        prog = build_filter(self.policy.rules) if self.use_seccomp else None
        pid, err_fd = spawn_traced(argv, env, prog)
        self._exec_err_fd = err_fd
        self.main_pid = pid
        self.tasks[pid] = _Task(pid, started=True)  # seized directly: no attach stop
        if self.on_started:
            self.on_started(pid)
        self._loop()
        if self._exec_err_fd is not None:
            # It died before its execve: say why instead of a bare 127.
            failure = read_exec_failure(self._exec_err_fd)
            self._exec_err_fd = None
            if failure is not None:
                raise SpawnError(f"{argv[0]}: {failure[0]}", failure[1])
        assert self.main_status is not None
        return self.main_status

    # --- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while self.tasks or self.held:
            try:
                tid, status = os.waitpid(-1, WALL | WNOTHREAD)
            except ChildProcessError:
                break
            self.stats.stops += 1
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(tid, status)
                continue
            if not os.WIFSTOPPED(status):
                continue
            try:
                self._stopped(tid, os.WSTOPSIG(status), status >> 16)
            except pt.PtraceError as exc:
                # ESRCH: killed (SIGKILL) while stopped; its exit is reported next.
                if getattr(exc, "errno", None) != errno.ESRCH:
                    raise

    def _gone(self, tid: int, status: int) -> None:
        self.tasks.pop(tid, None)
        self.held.discard(tid)
        self.expected.discard(tid)
        if tid == self.main_pid and self.main_status is None:
            if os.WIFEXITED(status):
                self.main_status = ExitStatus(code=os.WEXITSTATUS(status))
            else:
                self.main_status = ExitStatus(signal=os.WTERMSIG(status))

    def _resume(self, tid: int, sig: int = 0) -> None:
        if self.use_seccomp:
            pt.cont(tid, sig)
        else:
            pt.syscall(tid, sig)

    def _stopped(self, tid: int, sig: int, event: int) -> None:
        task = self.tasks.get(tid)
        if task is None:
            # An auto-attached child whose parent's fork event has not arrived yet.
            task = self.tasks[tid] = _Task(tid)
            if tid not in self.expected:
                self.held.add(tid)
                task.started = event == pt.PTRACE_EVENT_STOP
                return
        if event == pt.PTRACE_EVENT_SECCOMP:
            self._seccomp_stop(tid, pt.geteventmsg(tid))
        elif sig == SYSCALL_TRAP:
            self._syscall_stop(task)
        elif event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
            self._new_task(pt.geteventmsg(tid))
            self._resume(tid)
        elif event == pt.PTRACE_EVENT_EXEC:
            self._exec(tid, pt.geteventmsg(tid))
            self._resume(tid)
        elif event == pt.PTRACE_EVENT_STOP:
            self._event_stop(task, sig)
        elif event == 0:
            # Signal-delivery-stop: hand the signal to the program.
            self._resume(tid, sig)
        else:
            self._resume(tid)

    def _new_task(self, child: int) -> None:
        if child in self.held:
            self.held.discard(child)
            task = self.tasks[child]
            if task.started:
                self._resume(child)
            return
        self.tasks.setdefault(child, _Task(child))
        self.expected.add(child)

    def _event_stop(self, task: _Task, sig: int) -> None:
        if not task.started:
            task.started = True
            self.expected.discard(task.tid)
            self._resume(task.tid)
        elif sig in STOP_SIGNALS:
            # Group-stop: stay stopped, but let SIGCONT through (PTRACE_LISTEN). When the
            # program stops (Ctrl-Z), mirrord stops too, so the shell sees the job stop.
            pt.listen(task.tid)
            if task.tid == self.main_pid and self.on_main_stopped:
                self.on_main_stopped(sig)
        else:
            self._resume(task.tid)

    def _exec(self, tid: int, former_tid: int) -> None:
        if former_tid != tid:
            # A non-leader thread exec'd and took the leader's tid; the old one is gone.
            self.tasks.pop(former_tid, None)
        task = self.tasks[tid]
        task.in_syscall = True  # full-stop mode: the execve's exit stop comes next
        if tid == self.main_pid and self._exec_err_fd is not None:
            os.close(self._exec_err_fd)
            self._exec_err_fd = None

    # --- syscalls --------------------------------------------------------------------

    def _seccomp_stop(self, tid: int, data: int) -> None:
        if data == FOREIGN_ABI:
            if not self._foreign_warned:
                self._foreign_warned = True
                print(
                    "mirrord: warning: the program makes 32-bit syscalls; they run "
                    "unchanged (mirrord's features do not apply to them)",
                    file=sys.stderr,
                )
            self._resume(tid)
            return
        self._handle(tid, data, pt.getregs(tid), fake_now=True)

    def _syscall_stop(self, task: _Task) -> None:
        """A syscall stop: only seen in the full-stop fallback (no seccomp)."""
        if not task.in_syscall:
            task.in_syscall = True
            regs = pt.getregs(task.tid)
            rule = self._trapped.get(regs.orig_rax)
            if rule is None:
                pt.syscall(task.tid)
            elif rule.kind is Kind.ERRNO:
                task.fake_ret = -rule.errno
                regs.orig_rax = U64
                pt.setregs(task.tid, regs)
                pt.syscall(task.tid)
            elif rule.arg0_mask and not (regs.rdi & rule.arg0_mask):
                pt.syscall(task.tid)
            else:
                self._handle(task.tid, regs.orig_rax, regs, fake_now=False)
            return
        task.in_syscall = False
        if task.fake_ret is not None:
            regs = pt.getregs(task.tid)
            regs.rax = task.fake_ret & U64
            task.fake_ret = None
            pt.setregs(task.tid, regs)
        pt.syscall(task.tid)

    def _handle(self, tid: int, nr: int, regs: pt.Regs, *, fake_now: bool) -> None:
        handler = self.policy.handlers.get(nr)
        if handler is None:
            self._resume(tid)
            return
        sc = Syscall(tid, nr, tuple(getattr(regs, r) for r in ARG_REGS))
        try:
            action = handler(sc, _Mem(tid))
        except Exception:
            # Fail closed: a broken handler must not let the syscall silently run locally.
            log.exception("handler for syscall %d failed; the program gets EIO", nr)
            action = Fake(-errno.EIO)
        if isinstance(action, Fake):
            regs.orig_rax = U64  # -1: the kernel skips the syscall
            regs.rax = action.ret & U64
            pt.setregs(tid, regs)
            if not fake_now:
                # At a plain syscall-entry stop the kernel overwrites rax with -ENOSYS;
                # set the result again at the exit stop.
                self.tasks[tid].fake_ret = action.ret
        elif isinstance(action, Allow) and action.set_args:
            for index, value in action.set_args.items():
                setattr(regs, ARG_REGS[index], value & U64)
            pt.setregs(tid, regs)
        self._resume(tid)
