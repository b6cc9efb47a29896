"""Start an agent on this machine as a child process (`mirrord exec --target pid/N`).

The agent's stderr goes to a log file, not a pipe: a pipe nobody drains can fill up and
stall the agent, and a file can be shown after a failure. Without `log_path` the file has
no name at all (O_TMPFILE), so nothing is left behind even when mirrord is SIGKILLed; an
error raised at startup already carries its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

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


class LocalAgent:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
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
            if self.process.stdout is not None:
                # Drop the pipe's transport now rather than at garbage collection.
                self.process.stdout.feed_eof()
            self._log.close()
        return self.process.returncode


async def _terminate(process: asyncio.subprocess.Process, grace: float) -> None:
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
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            # Its own session: a Ctrl-C or Ctrl-Z at the terminal is for the program, not
            # for the agent (it ends with mirrord through --parent-death and Bye).
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    try:
        address = await asyncio.wait_for(_read_address(process), startup_timeout)
    except BaseException as e:
        await _terminate(process, 1.0)
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
    return LocalAgent(process, address, token, log, path)


async def _read_address(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            status = await process.wait()
            raise AgentStartFailed(f"the local agent exited with status {status} before listening")
        text = line.decode(errors="replace").strip()
        if text.startswith(LISTENING_PREFIX + " "):
            return text[len(LISTENING_PREFIX) + 1 :]


class EarlyAgent:
    """A local agent started before the session knows it needs one (`mirrord exec` starts
    it while the config loads): `ready()` waits for it, `discard()` stops it unused."""

    def __init__(self, ping_timeout: float) -> None:
        self.ping_timeout = ping_timeout
        # Started on the running loop now; its time overlaps the caller's work.
        self._task = asyncio.ensure_future(
            start_local_agent(ping_timeout=ping_timeout, startup_timeout=DEFAULT_EARLY_STARTUP)
        )

    async def ready(self, startup_timeout: float) -> LocalAgent:
        return await asyncio.wait_for(asyncio.shield(self._task), startup_timeout)

    async def discard(self) -> None:
        if not self._task.done():
            self._task.cancel()
        try:
            agent = await self._task
        except BaseException:
            return
        await agent.stop()
