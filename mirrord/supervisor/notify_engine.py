"""The notify engine: serve the program's trapped syscalls as seccomp user notifications.

The supervisor is not the program's tracer, so a debugger can be. Rules it keeps:
- One thread ("the engine thread") reads notifications from the listener, runs the
  handlers, reaps the first program and makes every ptrace request (only the short
  chdir injection: inject.py). It sleeps in select() on the listener, a signalfd for
  SIGCHLD and an eventfd (wakeup.py).
- A handler's answer is sent at once; `Defer` work runs on the asyncio loop and its answer
  is sent from the loop thread that finished it (a notification may be answered from any
  thread: no wake-up of the engine thread, no wait for the GIL the loop holds).
- Signals: a call we serve waits killably (a remote open is never cut short, as natively);
  a call that natively blocks interruptibly (accept, recv, connect: `Defer.interruptible`)
  is watched on a short tick and ended with -ERESTARTSYS when a signal comes for its
  thread (sigwatch.py), so the handler runs promptly and the call restarts or fails with
  EINTR as natively; inflight.py joins the restart to the work in progress, or hands it
  the parked result.
- The run ends when the first program has been reaped and the listener hangs up: no
  process of the tree uses the filter any more (daemonized grandchildren included, as
  `strace -f` waits for them).
- Job control: when the first program stops on a terminal stop signal (Ctrl-Z), mirrord
  stops itself so the shell sees the job stop; a SIGSTOP sent to the program alone does
  not stop mirrord (its SIGCONT would then leave us stopped and the program waiting).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mirrord.supervisor import inject, sigwatch
from mirrord.supervisor.actions import (
    Action,
    Allow,
    Chdir,
    Defer,
    Fake,
    InstallFd,
    Memory,
    OpenFile,
    Syscall,
)
from mirrord.supervisor.inflight import Entry, Inflight
from mirrord.supervisor.memory import MAX_AGE_S, TraceeMemory
from mirrord.supervisor.notify import (
    WAKE_SIGNAL,
    Listener,
    Notification,
    install_wake_handler,
    receive_buffer,
)
from mirrord.supervisor.policy import Policy
from mirrord.supervisor.proctree import ProcessTree
from mirrord.supervisor.spawn import Spawned, SpawnError, read_exec_failure
from mirrord.supervisor.status import ExitStatus, Stats
from mirrord.supervisor.syscalls import AUDIT_ARCH_X86_64, NR
from mirrord.supervisor.wakeup import Wakeup

log = logging.getLogger("mirrord.supervisor")

TERMINAL_STOPS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
EXECS = frozenset({NR["execve"], NR["execveat"]})
# How often calls that may block are checked for a signal (and dead threads).
SWEEP_S = 0.01
STOP_S = 5.0  # how long the end of the run waits for the serving thread
# The program's first connect() that we serve (a pod connect: Defer) starts a second
# receiving thread (_serve_forever says why).
STANDBY_AFTER = NR["connect"]

Then = Callable[[Any, Memory], Action]


class NotifyEngine:
    def __init__(
        self,
        policy: Policy,
        *,
        loop: asyncio.AbstractEventLoop | None,
        on_started: Callable[[int], None] | None = None,
        on_main_stopped: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy
        self.handlers = policy.handlers
        self.fast = policy.fast
        self.loop = loop
        self.on_started = on_started
        self.on_main_stopped = on_main_stopped
        self.stats = Stats()
        self.main_pid = 0
        self.main_status: ExitStatus | None = None
        self.tree = ProcessTree()
        self.inflight = Inflight()
        # The serving thread's reads of program memory (closed once it has stopped).
        self.mem = TraceeMemory(MAX_AGE_S, locked=False)
        self._loop_mem = TraceeMemory(MAX_AGE_S)  # the loop thread's (fds are per thread)
        self._listener: Listener | None = None
        self._wakeup: Wakeup | None = None
        self._thread = 0
        self._chdirs: collections.deque[tuple[Entry, str, Any]] = collections.deque()
        self._stopping = False
        self._servers: set[int] = set()  # the receiving threads' idents
        self._receivers: list[threading.Thread] = []
        self._standby = False  # the second receiving thread was started
        self._serve_lock = threading.Lock()
        self._foreign_warned = False
        self._chdir_warned = False

    # --- the run -----------------------------------------------------------------------

    def run(self, spawned: Spawned, argv0: str) -> ExitStatus:
        """Serve `spawned` (forked by spawn.py on this thread) until its tree is gone."""
        self._thread = threading.get_ident()
        self._wakeup = Wakeup()
        self.main_pid = spawned.pid
        self.tree.add(spawned.pid)
        if spawned.listener is not None:
            self._listener = Listener(spawned.listener)
            install_wake_handler()
            self._add_receiver(self._listener)
        if self.on_started:
            self.on_started(spawned.pid)
        try:
            self._control()
            failure = read_exec_failure(spawned.exec_err_fd)
            if failure is not None:
                raise SpawnError(f"{argv0}: {failure[0]}", failure[1])
        finally:
            stopped = self._stop_serving()
            if self._listener is not None and stopped:
                self._listener.close()
            self._wakeup.close()
            if stopped:
                self.mem.close()
            self._loop_mem.close()
        assert self.main_status is not None
        return self.main_status

    def _add_receiver(self, listener: Listener) -> None:
        server = threading.Thread(
            target=self._serve_forever,
            args=(listener,),
            name=f"mirrord-notify-{len(self._receivers)}",
            daemon=True,
        )
        self._receivers.append(server)  # before it runs: the stop must see it
        server.start()

    def _serve_forever(self, listener: Listener) -> None:
        """A receiving thread: wait for a notification, answer it (one at a time, under
        the serve lock), again. Two syscalls per call (RECV, SEND) and no sleep in
        between: the program, woken on our CPU by the answer (SYNC_WAKE_UP), makes its
        next call while we wait in the next RECV.

        A second one starts at the program's first connect() we serve: until a notification is
        received, a signal to its thread ends the wait and the call fails EINTR without
        having run (the kernel gives WAIT_KILLABLE_RECV only after RECV). For most calls
        that is a harmless EINTR, but a connect() "interrupted" natively goes on
        connecting, and programs (CPython) then wait for it and find an unconnected
        socket. While one thread serves, the other already waits in RECV, so that window
        stays a few microseconds. Not from the start: the kernel hands notifications to
        the waiting threads in turn, and each hand-over between them (a wake-up and the
        GIL) doubled the cost of every trapped call (ls -lR: 150 -> 310 ms)."""
        self._servers.add(threading.get_ident())
        buf = receive_buffer()
        receive = listener.wait_receive
        one = self._one
        lock = self._serve_lock
        while not self._stopping:
            n = receive(buf)
            if n is not None:
                with lock:
                    try:
                        one(listener, n)
                    except Exception:
                        log.exception("serving syscall %d failed", n.nr)

    def _stop_serving(self) -> bool:
        """Stop the receiving threads; False if one would not stop (then what they use is
        left open: they are daemon threads, gone with the process)."""
        locked = self._serve_lock.acquire(timeout=STOP_S)  # no receiver starts after this
        self._stopping = True
        if locked:
            self._serve_lock.release()
        deadline = time.monotonic() + STOP_S
        for server in self._receivers:
            while server.is_alive():
                if time.monotonic() > deadline:
                    log.error("the notify engine's serving thread did not stop")
                    return False
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pthread_kill(server.ident or 0, WAKE_SIGNAL)
                server.join(0.05)
        return True

    def _control(self) -> None:
        """This (the spawning) thread: reap the first program, job control, the end of
        the run (the listener hangs up once no process uses the filter), chdir
        injections, and the signal watch of calls that wait (on a short tick)."""
        assert self._wakeup is not None
        listener = self._listener
        hung_up = listener is None
        if listener is not None:
            self._wakeup.watch(listener.fd, hangup_only=True)
        reap = True
        while True:
            if reap:
                self._reap_main()
            if listener is not None and not hung_up and listener.hung_up_now():
                hung_up = True
                self._wakeup.unwatch(listener.fd)  # it would wake us at once, forever
            self._run_chdirs()
            if self.main_status is not None and hung_up:
                return
            timeout = SWEEP_S if self._sweep() else None
            self._wakeup.wait(timeout)
            # Only the listener woke us (its hang-up): no child changed state.
            reap = self._wakeup.maybe_stopped

    def _reap_main(self) -> None:
        if self.main_status is not None:
            return
        flags = os.WNOHANG | os.WUNTRACED | os.WCONTINUED
        while True:
            try:
                pid, status = os.waitpid(self.main_pid, flags)
            except ChildProcessError:
                if self.main_status is None:
                    self.main_status = ExitStatus(code=1)
                return
            if pid == 0:
                return
            if os.WIFEXITED(status):
                self.main_status = ExitStatus(code=os.WEXITSTATUS(status))
                return
            if os.WIFSIGNALED(status):
                self.main_status = ExitStatus(signal=os.WTERMSIG(status))
                return
            stopped = os.WIFSTOPPED(status) and os.WSTOPSIG(status) in TERMINAL_STOPS
            if stopped and self.on_main_stopped:
                self.on_main_stopped(os.WSTOPSIG(status))

    # --- notifications ---------------------------------------------------------------------

    def _one(self, listener: Listener, n: Notification) -> None:
        nid, tid, nr, arch, args = n
        self.stats.notifications += 1
        self.tree.seen(tid)
        fast = self.fast.get(nr)
        if fast is not None and arch == AUDIT_ARCH_X86_64:
            verdict = fast(tid, args, self.mem)
            if verdict is True:
                listener.proceed_serving(nid)  # e.g. a path already decided local
                return
            if verdict is not False:
                listener.answer_serving(nid, verdict)  # e.g. a stat the cache knows
                return
        handler = self.handlers.get(nr)
        if handler is None or arch != AUDIT_ARCH_X86_64:
            self._unhandled(listener, n)
            return
        if self.inflight.active:
            claim = self.inflight.claim((tid, nr, args), nid)
            if claim.entry is not None:
                if not claim.joined:  # a restart: the work's result is waiting for it
                    self._finish(claim.entry, claim.entry.result)
                return
        try:
            action = handler(Syscall(tid, nr, args, 0, True), self.mem.of(tid))
        except Exception:
            # Fail closed: a broken handler must not let the syscall silently run locally.
            log.exception("handler for syscall %d failed; the program gets EIO", nr)
            action = Fake(-errno.EIO)
        if type(action) is Allow and not action.set_args and action.on_exit is None:
            listener.proceed_serving(nid)  # the common answer, first
        elif isinstance(action, Defer):
            if nr == STANDBY_AFTER and not self._standby and not self._stopping:
                self._standby = True  # under the serve lock, as _stop_serving's flag
                self._add_receiver(listener)
            entry = self.inflight.start((tid, nr, args), nid, action.cancel_if_gone)
            self._continue(entry, action, None)
        elif isinstance(action, Chdir):
            entry = self.inflight.start((tid, nr, args), nid, False)
            entry.then = lambda _result, _mem: action
            self._continue(entry, action, None)
        else:
            self._deliver(listener, nid, tid, action)

    def _unhandled(self, listener: Listener, n: Notification) -> None:
        """Foreign-ABI calls, execs and calls no handler claims: run as they are."""
        if n.arch != AUDIT_ARCH_X86_64 and not self._foreign_warned:
            self._foreign_warned = True
            print(
                "mirrord: warning: the program makes 32-bit syscalls; they run "
                "unchanged (mirrord's features do not apply to them)",
                file=sys.stderr,
            )
        elif n.nr in EXECS:
            # Its memory is about to be replaced: a vfork child's cached fd would go on
            # naming its parent's (memory.py).
            self.mem.forget(n.tid)
            self._loop_mem.forget(n.tid)
        listener.proceed(n.id)

    def _mem(self, tid: int) -> Memory:
        on_server = threading.get_ident() in self._servers
        return (self.mem if on_server else self._loop_mem).of(tid)

    def _continue(self, entry: Entry, action: Action, result: Any) -> None:
        """Defer: start its work; Chdir: hand it to the engine thread (`result`: the work
        result it came from, parked if the call is interrupted meanwhile)."""
        if isinstance(action, Chdir):
            self._chdirs.append((entry, action.path, result))
            if threading.get_ident() != self._thread:
                self._wakeup_engine()  # the control thread injects it
            return
        assert isinstance(action, Defer)
        if self.loop is None:
            log.error("a handler deferred work but the engine has no event loop; EIO")
            entry.then = lambda _result, _mem: Fake(-errno.EIO)
            self._finish_with(entry, Fake(-errno.EIO), None)
            return
        entry.cancel_if_gone = action.cancel_if_gone
        entry.interruptible = action.interruptible
        entry.interruptible_from = time.monotonic() + action.grace
        entry.then = action.then
        work = action.work()
        if action.interruptible:
            work = self._watched(work)
        fut = asyncio.run_coroutine_threadsafe(_await(work), self.loop)
        entry.cancel = fut.cancel
        fut.add_done_callback(lambda f: self._work_done(entry, f))

    async def _watched(self, work: Awaitable[Any]) -> Any:
        """Work a signal may end: if it is still running after a tick, wake the control
        thread, whose signal watch then ticks too (a pod connect of 0.4 ms never does)."""
        timer = asyncio.get_running_loop().call_later(SWEEP_S, self._wakeup_engine)
        try:
            return await work
        finally:
            timer.cancel()

    def _work_done(self, entry: Entry, fut: concurrent.futures.Future[Any]) -> None:
        if entry.done or fut.cancelled():
            return  # its call is gone, or the run is over
        try:
            result: Any = fut.result()
        except BaseException as exc:  # handed to `then`, which decides
            result = exc
        self._finish(entry, result)

    def _finish(self, entry: Entry, result: Any) -> None:
        """The work is done: compute the answer for the call's newest id and send it."""
        then: Then = entry.then
        try:
            action = then(result, self._mem(Inflight.tid(entry)))
        except Exception:
            log.exception("deferred handler failed; the program gets EIO")
            action = Fake(-errno.EIO)
        if isinstance(action, (Defer, Chdir)):
            self._continue(entry, action, result)  # another step (e.g. wait again)
            return
        self._finish_with(entry, action, result)

    def _finish_with(self, entry: Entry, action: Action, result: Any) -> None:
        listener = self._listener
        if listener is None:
            return
        nid = self.inflight.answering(entry)
        if nid and self._deliver(listener, nid, Inflight.tid(entry), action):
            self.inflight.delivered(entry)
            return
        if not nid:
            _give_back(action)  # ended by a signal meanwhile: nobody to answer yet
        self.inflight.undelivered(entry, result)

    def _deliver(self, listener: Listener, nid: int, tid: int, action: Action) -> bool:
        """Send the answer. False when the call is gone (interrupted): then what was taken
        for it is given back (on_lost). True also when the run is over."""
        try:
            ok = self._send(listener, nid, action)
        except Exception:
            log.exception("answering a syscall failed")
            return True
        if ok or listener.closed:
            return True
        if isinstance(action, Fake):
            _give_back(action)
        return False

    def _send(self, listener: Listener, nid: int, action: Action) -> bool:
        if isinstance(action, Fake):
            return listener.answer(nid, action.ret)
        if isinstance(action, Allow):
            if action.set_args or action.on_exit is not None:
                log.error("a notified syscall answered with a register rewrite; EIO")
                return listener.answer(nid, -errno.EIO)
            return listener.proceed(nid)
        if isinstance(action, OpenFile):
            return _open_for(listener, nid, action)
        if isinstance(action, InstallFd):
            return _install(listener, nid, action)
        log.error("unexpected answer %r to a notification; EIO", action)
        return listener.answer(nid, -errno.EIO)

    # --- chdir into a remote directory ------------------------------------------------------

    def _run_chdirs(self) -> None:
        while self._chdirs:
            entry, path, result = self._chdirs.popleft()
            self._chdir(entry, path, result)

    def _chdir(self, entry: Entry, path: str, result: Any) -> None:
        listener = self._listener
        tid = Inflight.tid(entry)
        if listener is None:
            return
        nid = self.inflight.answering(entry)
        if not nid or not listener.id_valid(nid):
            # Its thread died meanwhile.
            self.inflight.undelivered(entry, result)
            return
        # The serving thread answers our own restarted chdir's notification meanwhile.
        outcome = inject.chdir(
            tid, os.fsencode(path), end_wait=lambda: listener.answer(nid, -sigwatch.ERESTARTSYS)
        )
        if outcome.main_status is not None and tid == self.main_pid:
            self.main_status = outcome.main_status
        if outcome.ret is not None:
            self.inflight.delivered(entry)  # the program's call returned what we ran
            return
        if outcome.traced:
            # Another tracer (a debugger) holds the thread, or ptrace is not allowed here.
            if not self._chdir_warned:
                self._chdir_warned = True
                print(
                    "mirrord: warning: a chdir into a remote directory stays local: the "
                    "thread cannot be ptrace-attached for it (a debugger holds it, or "
                    "ptrace is not allowed)",
                    file=sys.stderr,
                )
            self._deliver(listener, nid, tid, Allow())
            self.inflight.delivered(entry)
            return
        # The thread was not where we expected: the call will be made again (our
        # -ERESTARTSYS) and gets the parked result.
        self.inflight.undelivered(entry, result)

    # --- deferred calls whose program call went away ------------------------------------

    def _sweep(self) -> bool:
        """End waits whose thread has a signal to handle (see sigwatch.py), cancel those
        whose thread died. True while any such wait runs (check again soon)."""
        listener = self._listener
        if listener is None or not len(self.inflight):
            return False
        watching = False
        for entry in self.inflight.running():
            if not (entry.interruptible or entry.cancel_if_gone):
                continue
            nid = self.inflight.newest(entry)
            if not nid:
                continue  # interrupted already; waiting for its restart
            watching = True
            err = 0
            if entry.interruptible and time.monotonic() >= entry.interruptible_from:
                err = sigwatch.interrupted(Inflight.tid(entry))
            if err:
                if not listener.answer(nid, -err) and listener.id_valid(nid):
                    continue  # answered meanwhile by the work's own answer
            elif listener.id_valid(nid):
                continue
            dropped = self.inflight.interrupted(entry, nid)
            if dropped and entry.cancel is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(entry.cancel)
        return watching

    def _wakeup_engine(self) -> None:
        if self._wakeup is not None:
            self._wakeup.poke()

    # --- for the run's owner ------------------------------------------------------------------

    def live_targets(self) -> list[int]:
        """Where a forwarded signal goes: the program, or what is left of its tree."""
        if self.main_status is None:
            return [self.main_pid]
        return self.tree.alive()


def _give_back(action: Action) -> None:
    """What an undelivered answer took goes back (a datagram, a connection)."""
    if isinstance(action, Fake) and action.on_lost is not None:
        action.on_lost()
    elif isinstance(action, InstallFd):
        if action.on_lost is not None:
            action.on_lost(action.fd)
        else:
            os.close(action.fd)


def _open_for(listener: Listener, nid: int, action: OpenFile) -> bool:
    # Ours is always close-on-exec; the program's copy gets its own O_CLOEXEC.
    flags = action.flags | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(action.path, flags, action.mode)
    except OSError as exc:
        return listener.answer(nid, -(exc.errno or errno.EIO))
    try:
        return listener.answer_fd(nid, fd, cloexec=bool(action.flags & os.O_CLOEXEC))
    finally:
        os.close(fd)


def _install(listener: Listener, nid: int, action: InstallFd) -> bool:
    try:
        ok = listener.answer_fd(nid, action.fd, cloexec=action.cloexec)
    except BaseException:
        os.close(action.fd)
        raise
    if ok or action.on_lost is None or listener.closed:
        os.close(action.fd)
    else:
        action.on_lost(action.fd)  # the fd goes back to whoever took it
    return ok


async def _await(aw: Any) -> Any:
    return await aw


__all__ = ["NotifyEngine"]
