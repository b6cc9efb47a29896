"""The ptrace engine: one thread, one `waitpid(-1, __WALL)`, every ptrace request.

The fallback of the notify engine (engine.py says when), with the same handlers
(`Syscall.notified` is False here: they rewrite registers instead of performing calls).
Rules this loop keeps (DESIGN.md):
- Every ptrace request comes from the thread that seized the program (ptrace is per
  thread), so spawning and this loop run on one thread.
- At most one GETREGS and one SETREGS per stop; tracee memory through
  /proc/TID/mem and process_vm_writev (never word-by-word pokes).
- PTRACE_SEIZE, not TRACEME: group-stops are told apart from signals
  (PTRACE_EVENT_STOP) and parked with PTRACE_LISTEN, so job control still works.
- A new child's first stop can arrive before its parent's fork event; it is held until
  the event names it, so per-process state can be copied before the child runs.
- The run ends when no traced task is left (like `strace -f`); the exit status is the
  first program's.
- The thread sleeps in select() on a signalfd (SIGCHLD) and an eventfd (answers to
  deferred syscalls), never in a blocking waitpid, so a thread waiting for the agent stays
  stopped while every other tracee is served (wakeup.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mirrord.supervisor import ptrace_ops as pt
from mirrord.supervisor.actions import Action, Allow, Defer, ExitHook, Fake, Syscall
from mirrord.supervisor.memory import TraceeMemory
from mirrord.supervisor.policy import Policy
from mirrord.supervisor.seccomp import FOREIGN_ABI, Kind, Rule, build_filter
from mirrord.supervisor.spawn import Spawned, SpawnError, read_exec_failure, spawn
from mirrord.supervisor.status import ExitStatus, Stats
from mirrord.supervisor.wakeup import Wakeup

log = logging.getLogger("mirrord.supervisor")

WALL = 0x40000000  # __WALL: threads and clone children too
WNOTHREAD = 0x20000000  # __WNOTHREAD: only our own children/tracees, not the agent's
U64 = (1 << 64) - 1
TERMINAL_STOPS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
STOP_SIGNALS = TERMINAL_STOPS | {signal.SIGSTOP}
SYSCALL_TRAP = signal.SIGTRAP | 0x80
# How long _reap keeps polling waitpid after handling a stop before it sleeps (bench:
# python3 start-up, ~600 stops, 100 -> 67 ms on 2 CPUs). Bounded CPU per burst of stops.
SPIN_S = 200e-6
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


@dataclass
class _ExitFix:
    """What to do at the exit stop of a syscall we let run."""

    restore: dict[str, int]  # argument registers to put back
    hook: ExitHook | None = None
    fake_ret: int | None = None  # full-stop fallback: a faked result, set again at exit


@dataclass
class _Task:
    tid: int
    started: bool = False  # its first (attach) stop has been seen
    in_syscall: bool = False  # full-stop fallback: entry seen, exit pending
    exit_fix: _ExitFix | None = None


class Tracer:
    def __init__(
        self,
        policy: Policy,
        *,
        use_seccomp: bool = True,
        on_started: Callable[[int], None] | None = None,
        on_main_stopped: Callable[[int], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
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
        self.mem = TraceeMemory()  # reads of tracee memory
        self._trapped = policy.trapped()
        self._foreign_warned = False
        self._exec_err_fd: int | None = None
        self.loop = loop  # where deferred work runs
        self._answers: collections.deque[tuple[int, Defer, Any, pt.Regs, bool]] = (
            collections.deque()
        )
        self._wakeup: Wakeup | None = None
        # A syscall stop was answered and its thread resumed during this _reap (see
        # SPIN_S): fork/exec/exit events do not come in bursts, syscalls do.
        self._resumed = False

    # --- public --------------------------------------------------------------------

    def traces(self, pid: int) -> bool:
        """`pid` (a process) is one we trace."""
        return pid in self.tasks

    def filter(self) -> bytes | None:
        """The seccomp program this engine runs the program under (None: no seccomp)."""
        return build_filter(self.policy.rules, notify=False) if self.use_seccomp else None

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> ExitStatus:
        """Start the program and trace it and its descendants until all have exited."""
        spawned = spawn(argv, env, notify_prog=None, trace_prog=self.filter())
        return self.run_spawned(spawned, argv[0])

    def run_spawned(self, spawned: Spawned, argv0: str) -> ExitStatus:
        """Trace `spawned` (seized by spawn.py on this thread) and its descendants."""
        self._wakeup = Wakeup()
        try:
            return self._run(spawned, argv0)
        finally:
            self._wakeup.close()
            self.mem.close()

    def _run(self, spawned: Spawned, argv0: str) -> ExitStatus:
        pid = spawned.pid
        self._exec_err_fd = spawned.exec_err_fd
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
                raise SpawnError(f"{argv0}: {failure[0]}", failure[1])
        assert self.main_status is not None
        return self.main_status

    # --- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._wakeup is not None
        reap = True
        while self.tasks or self.held:
            if reap:
                self._reap()
            reap = True
            if not (self.tasks or self.held):
                break
            if self._answers or self._wakeup.wait():
                self._answer_deferred()
            else:
                reap = self._wakeup.maybe_stopped

    def _reap(self) -> None:
        """Handle every stop and exit that is waiting, without blocking."""
        handled = False
        deadline = 0.0
        self._resumed = False
        while True:
            try:
                tid, status = os.waitpid(-1, WALL | WNOTHREAD | os.WNOHANG)
            except ChildProcessError:
                self.tasks.clear()  # nothing traced is left, whatever we thought
                self.held.clear()
                return
            if tid == 0:
                if handled and self._resumed and not self._answers:
                    # Busy-poll briefly before sleeping: a program that just made a
                    # trapped syscall usually makes the next within microseconds, and a
                    # select() sleep + SIGCHLD wakeup per stop costs more than the stop.
                    # Only when a tracee was resumed (not all waiting on the agent, whose
                    # answer needs the CPU), and answers that came meanwhile end it.
                    now = time.perf_counter()
                    if not deadline:
                        deadline = now + SPIN_S
                    if now < deadline:
                        continue
                return
            handled = True
            deadline = 0.0
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
        self.mem.forget(tid)
        self.tasks.pop(tid, None)
        self.held.discard(tid)
        self.expected.discard(tid)
        if self.held:
            self._release_orphans()
        if tid == self.main_pid and self.main_status is None:
            if os.WIFEXITED(status):
                self.main_status = ExitStatus(code=os.WEXITSTATUS(status))
            else:
                self.main_status = ExitStatus(signal=os.WTERMSIG(status))

    def _resume(self, tid: int, sig: int = 0) -> None:
        task = self.tasks.get(tid)
        if self.use_seccomp and (task is None or task.exit_fix is None):
            pt.cont(tid, sig)
        else:
            pt.syscall(tid, sig)  # stop again at this syscall's exit

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
            if self.use_seccomp:
                self._exit_stop(task)
            else:
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

    def _release_orphans(self) -> None:
        """Held children whose parent died before its fork event named them (killed
        around the fork, or while stopped at the event): none will, so they run now.
        Their parent is then no longer a traced process of theirs (reparented)."""
        for child in list(self.held):
            parent = _parent_of(child)
            if parent is not None and parent in self.tasks and parent not in self.held:
                continue  # its event is still to come
            self.held.discard(child)
            task = self.tasks.get(child)
            if task is not None and task.started:
                try:
                    self._resume(child)
                except pt.PtraceError as exc:
                    if getattr(exc, "errno", None) != errno.ESRCH:
                        raise

    def _new_task(self, child: int) -> None:
        known = self.tasks.get(child)
        if known is not None and known.started and child not in self.held:
            return  # released already (its parent's event came late)
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
            # program stops on a terminal stop signal (Ctrl-Z), mirrord stops too, so the
            # shell sees the job stop. Not on a SIGSTOP sent to the program alone: its
            # SIGCONT would find mirrord stopped and the program held.
            pt.listen(task.tid)
            if task.tid == self.main_pid and self.on_main_stopped and sig in TERMINAL_STOPS:
                self.on_main_stopped(sig)
        else:
            self._resume(task.tid)

    def _exec(self, tid: int, former_tid: int) -> None:
        self.mem.forget(tid)  # its memory fd is the old program's
        self.mem.forget(former_tid)
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
        """A syscall stop in the full-stop fallback (no seccomp): entry or exit."""
        if task.in_syscall:
            task.in_syscall = False
            self._exit_stop(task)
            return
        task.in_syscall = True
        regs = pt.getregs(task.tid)
        rule = self._trapped.get(regs.orig_rax)
        if rule is None or not _rule_stops(rule, regs):
            pt.syscall(task.tid)
        elif rule.kind is Kind.ERRNO:
            self._apply(task.tid, regs, Fake(-rule.errno), fake_now=False)
        else:
            self._handle(task.tid, regs.orig_rax, regs, fake_now=False)

    def _exit_stop(self, task: _Task) -> None:
        fix, task.exit_fix = task.exit_fix, None
        if fix is None:
            self._resume(task.tid)
            return
        regs = pt.getregs(task.tid)
        for name, value in fix.restore.items():
            setattr(regs, name, value)
        if fix.fake_ret is not None:
            regs.rax = fix.fake_ret & U64
        if fix.hook is not None:
            ret = regs.rax - (1 << 64) if regs.rax >= 1 << 63 else regs.rax
            try:
                new = fix.hook(ret, self.mem.of(task.tid))
            except Exception:
                log.exception("exit hook failed; the program gets EIO")
                new = -errno.EIO
            if new is not None:
                regs.rax = new & U64
        pt.setregs(task.tid, regs)
        self._resumed = True
        self._resume(task.tid)

    def _handle(self, tid: int, nr: int, regs: pt.Regs, *, fake_now: bool) -> None:
        handler = self.policy.handlers.get(nr)
        if handler is None:
            self._resume(tid)
            return
        args = tuple(getattr(regs, r) for r in ARG_REGS)
        sc = Syscall(tid, nr, args, regs.rsp)
        try:
            action = handler(sc, self.mem.of(tid))
        except Exception:
            # Fail closed: a broken handler must not let the syscall silently run locally.
            log.exception("handler for syscall %d failed; the program gets EIO", nr)
            action = Fake(-errno.EIO)
        self._apply(tid, regs, action, fake_now=fake_now)

    def _apply(self, tid: int, regs: pt.Regs, action: Action, *, fake_now: bool) -> None:
        task = self.tasks[tid]
        if isinstance(action, Fake):
            regs.orig_rax = U64  # -1: the kernel skips the syscall
            regs.rax = action.ret & U64
            pt.setregs(tid, regs)
            if not fake_now:
                # At a plain syscall-entry stop the kernel overwrites rax with -ENOSYS;
                # set the result again at the exit stop.
                task.exit_fix = _ExitFix({}, fake_ret=action.ret)
        elif isinstance(action, Allow):
            restore = {}
            for index, value in action.set_args.items():
                name = ARG_REGS[index]
                restore[name] = getattr(regs, name)
                setattr(regs, name, value & U64)
            if restore:
                pt.setregs(tid, regs)
            if restore or action.on_exit is not None:
                task.exit_fix = _ExitFix(restore, hook=action.on_exit)
        elif isinstance(action, Defer):
            self._defer(tid, regs, action, fake_now)
            return  # stays stopped until the answer comes
        else:
            log.error("%r answered at a ptrace stop (only for notifications); EIO", action)
            self._apply(tid, regs, Fake(-errno.EIO), fake_now=fake_now)
            return
        self._resumed = True
        self._resume(tid)

    # --- deferred syscalls ---------------------------------------------------------------

    def _defer(self, tid: int, regs: pt.Regs, action: Defer, fake_now: bool) -> None:
        if self.loop is None:
            log.error("a handler deferred work but the tracer has no event loop; EIO")
            self._apply(tid, regs, Fake(-errno.EIO), fake_now=fake_now)
            return
        fut = asyncio.run_coroutine_threadsafe(_await(action.work()), self.loop)

        def done(f: concurrent.futures.Future[Any]) -> None:
            try:
                result: Any = f.result()
            except BaseException as exc:  # handed to `then`, which decides
                result = exc
            self._answers.append((tid, action, result, regs, fake_now))
            if self._wakeup is not None:
                self._wakeup.poke()

        fut.add_done_callback(done)

    def _answer_deferred(self) -> None:
        while self._answers:
            tid, action, result, regs, fake_now = self._answers.popleft()
            if tid not in self.tasks:
                continue  # killed while it waited
            try:
                nxt = action.then(result, self.mem.of(tid))
            except Exception:
                log.exception("deferred handler failed; the program gets EIO")
                nxt = Fake(-errno.EIO)
            try:
                self._apply(tid, regs, nxt, fake_now=fake_now)
            except pt.PtraceError as exc:
                if getattr(exc, "errno", None) != errno.ESRCH:
                    raise


def _rule_stops(rule: Rule, regs: pt.Regs) -> bool:
    """The full-stop fallback's copy of the filter's argument tests (seccomp.py)."""
    if rule.arg0_mask and not (regs.rdi & rule.arg0_mask):
        return False
    return rule.arg_nonzero is None or getattr(regs, ARG_REGS[rule.arg_nonzero]) != 0


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


def _parent_of(tid: int) -> int | None:
    """Who will report `tid`'s creation: for a thread its process (the group leader's
    tid), for a process its parent; None if it is gone."""
    try:
        with open(f"/proc/{tid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        tgid, ppid = int(fields["Tgid"]), int(fields["PPid"])
    except (OSError, KeyError, ValueError):
        return None
    return tgid if tgid != tid else ppid
