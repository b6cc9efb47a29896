"""Starting the program under the supervisor: fork, filter, execve.

Notify engine (the default): the child sets no_new_privs, installs the filter with a
seccomp listener, writes the listener's fd number on a pipe and waits until we have
copied it (pidfd_getfd: as its parent we may) before it execs. Not SCM_RIGHTS: its own
sendmsg may be trapped by the filter it just installed, with nobody serving yet. Nobody
ptrace-attaches, so a debugger can. The child dies with the supervisor thread
(PR_SET_PDEATHSIG), as ptrace's EXITKILL did: without us its trapped syscalls would fail
with ENOSYS.

Ptrace engine: order matters (DESIGN.md, "Seccomp details"): the tracer must hold the child
with TRACESECCOMP and EXITKILL set *before* the filter exists, because without a tracer
every RET_TRACE syscall fails with ENOSYS. The child therefore waits on a pipe until the
parent has seized it, then sets no_new_privs, installs the filter and execs.

When the kernel refuses the listener (EBUSY: one exists already; EINVAL/ENOSYS: too old)
the child says so and waits; the parent seizes it and it installs the ptrace filter
instead. Only pipe reads and writes happen in the child once a filter is on: anything
the filter traps would wait for a supervisor that is not serving yet.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mirrord.supervisor import ptrace_ops
from mirrord.supervisor.notify import install_listener_filter
from mirrord.supervisor.pidfd import take_fd
from mirrord.supervisor.seccomp import Engine

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_GET_ACTION_AVAIL = 2
SYS_SECCOMP = 317
SECCOMP_RET_TRACE = 0x7FF00000

_libc = ctypes.CDLL(None, use_errno=True)

# Signals whose disposition or mask the supervisor changes for itself; the program must
# start with what mirrord itself was given, as it would from a shell: the default, or
# ignored when mirrord inherited them ignored (a background job's SIGINT and SIGQUIT,
# nohup's SIGHUP). SIGPIPE and SIGXFSZ start at the default: Python ignores them at its
# start-up, so what mirrord was given is not known.
RESET_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGCHLD,
)


_inherited_ignored: frozenset[int] = frozenset()
_inherited_mask: frozenset[int] = frozenset()


def note_inherited(ignored: frozenset[int], mask: frozenset[int]) -> None:
    """What mirrord was started with, before it changed anything (signals.py): which of
    RESET_SIGNALS were ignored, and the blocked mask. Programs started later get it."""
    global _inherited_ignored, _inherited_mask
    _inherited_ignored = frozenset(int(s) for s in ignored) & frozenset(map(int, RESET_SIGNALS))
    _inherited_mask = frozenset(int(s) for s in mask)


class SpawnError(Exception):
    """The program could not be started; the message is for the user."""

    def __init__(self, message: str, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PtraceRefused(SpawnError):
    pass


def seccomp_trace_available() -> bool:
    """Whether this kernel can run a filter that returns SECCOMP_RET_TRACE."""
    action = ctypes.c_uint32(SECCOMP_RET_TRACE)
    rc = _libc.syscall(SYS_SECCOMP, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action))
    return bool(rc == 0)


def resolve_executable(argv0: str, env: Mapping[str, str]) -> str:
    """Find the program the way execvp would, with the PATH the program will have."""
    if "/" in argv0:
        if not os.path.exists(argv0):
            raise SpawnError(f"{argv0}: no such file or directory")
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            raise SpawnError(f"{argv0}: permission denied (not an executable file)", 126)
        return argv0
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise SpawnError(f"{argv0}: command not found")
    return found


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True)
class Spawned:
    pid: int
    exec_err_fd: int  # read a failed exec's reason from it (read_exec_failure)
    engine: Engine
    listener: int | None = None  # notify engine: the seccomp listener
    # The notify engine was asked for but the kernel refused a listener: why (for the user).
    refused: str | None = None


def _child(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    notify_prog: bytes | None,
    trace_prog: bytes | None,
    sync_r: int,
    err_w: int,
    note_w: int | None,
) -> None:
    """Runs in the forked child; never returns."""
    try:
        # ctypes, not the signal module: this may be a fork of a non-main thread.
        for sig in RESET_SIGNALS:
            _libc.signal(int(sig), 1 if int(sig) in _inherited_ignored else 0)  # SIG_IGN/DFL
        mask = ctypes.create_string_buffer(pack_sigset(sorted(_inherited_mask)), 128)
        _libc.sigprocmask(2, mask, None)  # SIG_SETMASK
        parent = os.getppid()
        _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(127)  # the supervisor died before the line above
        if notify_prog is None and os.read(sync_r, 1) != b"x":
            os._exit(127)  # the tracer gave up on us
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if notify_prog is not None and note_w is not None:
            listener, err = install_listener_filter(notify_prog)
            if listener is None:
                os.write(note_w, b"t%d" % err)
                if os.read(sync_r, 1) != b"x":  # seized by the parent meanwhile
                    os._exit(127)
            else:
                os.write(note_w, b"n%d" % listener)
                if os.read(sync_r, 1) != b"y":  # the parent has its copy
                    os._exit(127)
                trace_prog = None
            os.close(note_w)
        os.close(sync_r)
        if trace_prog is not None:
            buf = ctypes.create_string_buffer(trace_prog, len(trace_prog))
            fprog = _SockFprog(len(trace_prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
            rc = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)
            if rc != 0:
                raise OSError(ctypes.get_errno(), "installing the seccomp filter")
        os.execve(path, list(argv), dict(env))
    except BaseException as exc:  # report anything, then die: never run the parent's code
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        msg = f"{code}:{exc}".encode(errors="replace")
        try:
            os.write(err_w, msg[:4000])
        finally:
            os._exit(127)


REFUSED = {
    errno.EBUSY: "a seccomp listener is already in place (a nested supervisor, or a "
    "container runtime that uses seccomp notifications)",
    errno.EINVAL: "this kernel cannot make a seccomp listener that waits killably "
    "(WAIT_KILLABLE_RECV, Linux 5.19)",
    errno.ENOSYS: "this kernel cannot make a seccomp listener",
}


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    notify_prog: bytes | None,
    trace_prog: bytes | None,
) -> Spawned:
    """Fork the program. `notify_prog` given: the notify engine, falling back to the
    ptrace engine with `trace_prog` if the kernel refuses a listener (or failing, if
    `trace_prog` is None). Otherwise the ptrace engine, with `trace_prog` (None: no
    seccomp, every syscall stops).

    Must be called on the thread that will serve the program (ptrace requests must come
    from the thread that seized; PR_SET_PDEATHSIG follows the forking thread)."""
    path = resolve_executable(argv[0], env)
    sync_r, sync_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    note_r, note_w = os.pipe2(os.O_CLOEXEC) if notify_prog is not None else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(sync_w)
        os.close(err_r)
        if note_r is not None:
            os.close(note_r)
        _child(path, argv, env, notify_prog, trace_prog, sync_r, err_w, note_w)
    os.close(sync_r)
    os.close(err_w)
    if note_w is not None:
        os.close(note_w)
    sync = _Pipe(sync_w)
    try:
        if note_r is None:
            _seize(pid, sync, err_r)
            return Spawned(pid, err_r, Engine.PTRACE)
        # b"" (it failed before the filter: the exec error says why), b"n<fd>": the
        # listener's number in the child, or b"t<errno>": refused.
        note = os.read(note_r, 32)
        if note.startswith(b"n"):
            try:
                listener = take_fd(pid, int(note[1:]))
            finally:
                os.write(sync.fd, b"y")
            return Spawned(pid, err_r, Engine.NOTIFY, listener=listener)
        if not note.startswith(b"t"):
            return Spawned(pid, err_r, Engine.NOTIFY)
        err = int(note[1:] or 0)
        reason = REFUSED.get(err, os.strerror(err))
        if trace_prog is None:
            sync.close()  # the child reads EOF and exits
            os.waitpid(pid, 0)
            os.close(err_r)
            raise SpawnError(f"cannot run the notify engine: {reason}", 1)
        _seize(pid, sync, err_r)
        return Spawned(pid, err_r, Engine.PTRACE, refused=reason)
    finally:
        if note_r is not None:
            os.close(note_r)
        sync.close()


class _Pipe:
    """Our end of the sync pipe, closed exactly once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _seize(pid: int, sync: _Pipe, err_r: int) -> None:
    """Seize the waiting child and let it go on."""
    try:
        ptrace_ops.seize(pid)
    except ptrace_ops.PtraceError as exc:
        sync.close()  # the child reads EOF and exits
        os.waitpid(pid, 0)
        os.close(err_r)
        raise PtraceRefused(_explain_ptrace_refusal(exc)) from None
    os.write(sync.fd, b"x")


def _explain_ptrace_refusal(exc: Exception) -> str:
    err = getattr(exc, "errno", None)
    reason = os.strerror(err) if err else str(exc)
    hints = []
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
        if scope == "3":
            hints.append("kernel.yama.ptrace_scope is 3 (ptrace disabled until reboot)")
        elif scope in ("1", "2"):
            hints.append(f"kernel.yama.ptrace_scope is {scope}")
    except OSError:
        pass
    if err == errno.EPERM:
        hints.append(
            "in a container, ptrace needs CAP_SYS_PTRACE or a seccomp profile that allows it"
        )
    hint = ("; " + "; ".join(hints)) if hints else ""
    return f"cannot trace the program: ptrace was refused ({reason}){hint}"


def read_exec_failure(err_r: int) -> tuple[str, int] | None:
    """Why the child could not exec and the shell-style exit code, or None if it did."""
    chunks = []
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_r)
    if not chunks:
        return None
    text = b"".join(chunks).decode(errors="replace")
    code, _, msg = text.partition(":")
    err = int(code) if code.isdigit() else 0
    # As shells do: found but not runnable is 126, anything else 127.
    exit_code = 126 if err in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM) else 127
    return (os.strerror(err) if err else msg), exit_code


def pack_sigset(signals: Sequence[int]) -> bytes:
    """A kernel sigset_t (64 bits) with these signals set."""
    mask = 0
    for s in signals:
        mask |= 1 << (s - 1)
    return struct.pack("<Q", mask)
