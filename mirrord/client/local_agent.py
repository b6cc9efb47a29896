"""Start an agent on this machine as a child process (`mirrord exec --target pid/N`).

The agent's stderr goes to a log file, not a pipe: a pipe nobody drains can fill up and
stall the agent, and a file can be shown after a failure. Without `log_path` the file has
no name at all (O_TMPFILE), so nothing is left behind even when mirrord is SIGKILLed; an
error raised at startup already carries its tail.

The process is spawned with subprocess.Popen, not asyncio's subprocess API, so that
`mirrord exec` can spawn it before its event loop exists (`spawn`, right after the
command line is read: its interpreter start-up then overlaps ours) and the loop adopts it
later (`AgentProcess`: its stdout on the loop, its end seen through a pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from mirrord import timing
from mirrord.client.errors import AgentStartFailed

LISTENING_PREFIX = "MIRRORD_AGENT_LISTENING"
TOKEN_ENV = "MIRRORD_AGENT_TOKEN"
PARENT_PID_ENV = "MIRRORD_AGENT_PARENT_PID"
DEFAULT_EARLY_STARTUP = 60.0  # an early agent's own bound; the session's is applied on top


def _tail(log: BinaryIO, lines: int = 20) -> str:
    try:
        # pread: the agent shares this file description; moving its offset would make the
        # agent write over what it wrote before.
        fd = log.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    except (OSError, ValueError):
        return "(no agent log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the agent wrote nothing to stderr)"


class Spawned:
    """An agent process just spawned: not listening yet, no event loop needed."""

    def __init__(
        self, popen: subprocess.Popen[bytes], token: str, log: BinaryIO, path: Path | None
    ) -> None:
        self.popen = popen
        self.token = token
        self.log = log
        self.path = path

    def kill(self) -> None:
        """Stop it unused (no loop: at the end of a command that never got to it)."""
        with contextlib.suppress(OSError):
            self.popen.kill()
            self.popen.wait()
        self.log.close()


def spawn(
    ping_timeout: float,
    log_path: str | os.PathLike[str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Spawned:
    """`python -m mirrord.agent --one-session --parent-death` on loopback with a fresh
    token (passed in the environment, never argv)."""
    token = secrets.token_urlsafe(32)
    path = Path(log_path) if log_path is not None else None
    log: BinaryIO = tempfile.TemporaryFile() if path is None else open(path, "ab")  # noqa: SIM115
    env = dict(os.environ)
    env[TOKEN_ENV] = token
    env[PARENT_PID_ENV] = str(os.getpid())
    argv = [
        sys.executable, "-m", "mirrord.agent",
        "--one-session", "--parent-death", "--listen", "127.0.0.1:0",
        "--ping-timeout", f"{ping_timeout:g}",
        *extra_args,
    ]  # fmt: skip
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            # Its own session: a Ctrl-C or Ctrl-Z at the terminal is for the program, not
            # for the agent (it ends with mirrord through --parent-death and Bye).
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    return Spawned(popen, token, log, path)


class AgentProcess:
    """A spawned agent on the event loop: the parts of asyncio.subprocess.Process we use."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = asyncio.StreamReader()
        self._transport: asyncio.BaseTransport | None = None

    async def attach(self) -> None:
        assert self._popen.stdout is not None
        reader = self.stdout
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._popen.stdout
        )

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def kill(self) -> None:
        self._popen.kill()

    async def wait(self) -> int:
        """Its exit status, waiting on a pidfd (no thread, no SIGCHLD handler)."""
        if self._popen.poll() is None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(self.pid)
            try:
                ended: asyncio.Future[None] = loop.create_future()

                def readable() -> None:
                    if not ended.done():
                        ended.set_result(None)

                loop.add_reader(pidfd, readable)
                try:
                    if self._popen.poll() is None:
                        await ended
                finally:
                    loop.remove_reader(pidfd)
            finally:
                os.close(pidfd)
        return self._popen.wait()

    def close(self) -> None:
        """Drop the stdout pipe's transport now rather than at garbage collection."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class LocalAgent:
    def __init__(
        self,
        process: AgentProcess,
        address: str,
        token: str,
        log: BinaryIO,
        log_path: Path | None,
    ) -> None:
        self.process = process
        self.address = address
        self.token = token
        self.pid = process.pid
        self.log_path = log_path  # None: an unnamed temporary file
        self._log = log
        self._stopped = False

    def stderr_tail(self, lines: int = 20) -> str:
        return _tail(self._log, lines)

    async def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM (the agent ends its sessions and runs their cleanups), SIGKILL after
        `grace` seconds. Returns the exit status; idempotent."""
        if not self._stopped:
            self._stopped = True
            await _terminate(self.process, grace)
            self.process.close()
            self._log.close()
        return self.process.returncode


async def _terminate(process: AgentProcess, grace: float) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def start_local_agent(
    *,
    ping_timeout: float,
    startup_timeout: float,
    log_path: str | os.PathLike[str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> LocalAgent:
    """Launch `python -m mirrord.agent --one-session --parent-death` on loopback with a fresh
    token (passed in the environment, never argv) and wait until it listens."""
    return await listening(spawn(ping_timeout, log_path, extra_args), startup_timeout)


async def listening(spawned: Spawned, startup_timeout: float) -> LocalAgent:
    """Adopt a spawned agent on the running loop and wait until it listens."""
    process, log = AgentProcess(spawned.popen), spawned.log
    try:
        await process.attach()
        address = await asyncio.wait_for(_read_address(process), startup_timeout)
        timing.mark("local agent listening")
    except BaseException as e:
        await _terminate(process, 1.0)
        process.close()
        tail = _tail(log)
        log.close()
        if isinstance(e, TimeoutError):
            raise AgentStartFailed(
                f"the local agent did not start listening within {startup_timeout:g}s; "
                f"its stderr ends with:\n{tail}"
            ) from None
        if isinstance(e, AgentStartFailed):
            raise AgentStartFailed(f"{e}; its stderr ends with:\n{tail}") from None
        raise
    return LocalAgent(process, address, spawned.token, log, spawned.path)


async def _read_address(process: AgentProcess) -> str:
    while True:
        line = await process.stdout.readline()
        if not line:
            status = await process.wait()
            raise AgentStartFailed(f"the local agent exited with status {status} before listening")
        text = line.decode(errors="replace").strip()
        if text.startswith(LISTENING_PREFIX + " "):
            return text[len(LISTENING_PREFIX) + 1 :]


class EarlyAgent:
    """A local agent started before the session knows it needs one (`mirrord exec` spawns
    it as soon as its command line is read, before the config loads): `start()` adopts it
    on the loop (or spawns it now), `ready()` waits until it listens, `discard()` stops it
    unused."""

    def __init__(self, ping_timeout: float, spawned: Spawned | None = None) -> None:
        self.ping_timeout = ping_timeout
        self._spawned = spawned
        self._task: asyncio.Future[LocalAgent] | None = None

    async def start(self) -> None:
        try:
            spawned = self._spawned or spawn(self.ping_timeout)
        except Exception as e:  # told by ready(), if the session needs it at all
            self._task = asyncio.get_running_loop().create_future()
            self._task.set_exception(e)
            return
        self._spawned = None
        self._task = asyncio.ensure_future(listening(spawned, DEFAULT_EARLY_STARTUP))

    async def ready(self, startup_timeout: float) -> LocalAgent:
        assert self._task is not None, "start() first"
        return await asyncio.wait_for(asyncio.shield(self._task), startup_timeout)

    async def discard(self) -> None:
        if self._spawned is not None:  # never started
            self._spawned.kill()
            self._spawned = None
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        try:
            agent = await self._task
        except BaseException:
            return
        await agent.stop()
