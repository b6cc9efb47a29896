"""Starting the program under the tracer: fork, seize, seccomp, execve.

Order matters (DESIGN.md, "Seccomp details"): the tracer must hold the child with
TRACESECCOMP and EXITKILL set *before* the filter exists, because without a tracer every
RET_TRACE syscall fails with ENOSYS. The child therefore waits on a pipe until the parent
has seized it, then sets no_new_privs, installs the filter and execs.

When the filter has user-notification rules (notify.py), the child installs it with a
listener, writes the listener's fd number on a pipe and waits; the parent copies the fd
with pidfd_getfd(2) and lets it go on to execve (which closes its O_CLOEXEC copy). Only
read/write on pipes happen in the child once the filter is on: anything the filter
stops or notifies would wait for a parent that is not serving yet. If the kernel refuses
a listener the child installs the trace-only variant and writes "t".
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import struct
from collections.abc import Mapping, Sequence

from mirrord.supervisor import ptrace_ops
from mirrord.supervisor.notify import install_listener_filter
from mirrord.supervisor.pidfd import take_fd

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_GET_ACTION_AVAIL = 2
SYS_SECCOMP = 317
SECCOMP_RET_TRACE = 0x7FF00000

_libc = ctypes.CDLL(None, use_errno=True)

# Signals whose disposition or mask the supervisor changes for itself; the program must
# start with the defaults, as it would from a shell (SIGPIPE is ignored by Python).
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


def _child(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    filter_prog: bytes | None,
    fallback_prog: bytes | None,
    sync_r: int,
    err_w: int,
    note_w: int | None,
) -> None:
    """Runs in the forked child; never returns."""
    try:
        # ctypes, not the signal module: this may be a fork of a non-main thread.
        for sig in RESET_SIGNALS:
            _libc.signal(int(sig), 0)  # SIG_DFL
        empty = ctypes.create_string_buffer(128)  # sigset_t, all clear
        _libc.sigprocmask(2, empty, None)  # SIG_SETMASK
        if os.read(sync_r, 1) != b"x":
            os._exit(127)  # the tracer gave up on us
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if note_w is not None and filter_prog is not None:
            listener = install_listener_filter(filter_prog)
            if listener is None:
                filter_prog = fallback_prog  # installed below, trace-only
                os.write(note_w, b"t")
            else:
                filter_prog = None
                os.write(note_w, b"%d" % listener)
                os.close(note_w)
                if os.read(sync_r, 1) != b"y":  # the parent has its copy
                    os._exit(127)
        os.close(sync_r)
        if filter_prog is not None:
            buf = ctypes.create_string_buffer(filter_prog, len(filter_prog))
            fprog = _SockFprog(len(filter_prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
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


def spawn_traced(
    argv: Sequence[str],
    env: Mapping[str, str],
    filter_prog: bytes | None,
    fallback_prog: bytes | None = None,
) -> tuple[int, int, int | None]:
    """Fork and seize the program. Returns (pid, fd to read a failed exec's reason from,
    the seccomp listener fd or None).

    `fallback_prog` is given when `filter_prog` has user-notification rules: the filter
    to install instead if the kernel will not make a listener.
    Must be called on the thread that will issue every later ptrace request.
    """
    path = resolve_executable(argv[0], env)
    sync_r, sync_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    want_listener = filter_prog is not None and fallback_prog is not None
    note_r, note_w = os.pipe2(os.O_CLOEXEC) if want_listener else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(sync_w)
        os.close(err_r)
        if note_r is not None:
            os.close(note_r)
        _child(path, argv, env, filter_prog, fallback_prog, sync_r, err_w, note_w)
    os.close(sync_r)
    os.close(err_w)
    if note_w is not None:
        os.close(note_w)
    try:
        ptrace_ops.seize(pid)
    except ptrace_ops.PtraceError as exc:
        os.close(sync_w)  # the child reads EOF and exits
        if note_r is not None:
            os.close(note_r)
        os.waitpid(pid, 0)
        os.close(err_r)
        raise PtraceRefused(_explain_ptrace_refusal(exc)) from None
    os.write(sync_w, b"x")
    listener = None
    if note_r is not None:
        # b"" (it failed before the filter: the exec error says why) or b"t": none.
        note = os.read(note_r, 32)
        os.close(note_r)
        if note.isdigit():
            try:
                listener = take_fd(pid, int(note))
            finally:
                os.write(sync_w, b"y")
    os.close(sync_w)
    return pid, err_r, listener


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
