"""A session: one client's Session stream, the target it acts on, and what to undo at the end.

Features register their undo work with `session.on_close(callback)` as they do things
(an iptables rule added, a socket opened); `close()` runs the callbacks once, newest first,
logging errors instead of raising, so one failed cleanup never skips the others.
"""

import asyncio
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable

from mirrord.agent.namespaces import NamespaceWorker
from mirrord.v1 import agent_pb2

log = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[object] | object]


class AgentSession:
    def __init__(self, pid: int | None, worker: NamespaceWorker, ping_timeout: float) -> None:
        self.id = secrets.token_hex(16)
        self.pid = pid  # None: targetless
        self.worker = worker
        self.ping_timeout = ping_timeout
        # Messages for the client, written to the stream in order by the Session handler.
        # None marks the end of the stream.
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self.closed = asyncio.Event()
        self._cleanups: list[tuple[str, Cleanup]] = []
        self._closing = False
        # The worker thread goes last: earlier cleanups may still need to run on it.
        self.on_close(worker.shutdown, "namespace worker")

    def on_close(self, callback: Cleanup, what: str = "") -> None:
        """Register undo work; runs when the session ends, in reverse registration order."""
        if self._closing:
            raise RuntimeError(f"session {self.id} is already closing")
        self._cleanups.append((what or getattr(callback, "__qualname__", repr(callback)), callback))

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        """Queue a message for the client (dropped once the session has ended)."""
        if not self.ended.is_set():
            self._outbox.put_nowait(msg)

    async def next_outgoing(self) -> agent_pb2.AgentMessage | None:
        """The next message to write to the client; None when the stream must end."""
        return await self._outbox.get()

    def end(self, reason: str, *, tell_client: bool = False) -> None:
        """Ask for the session to end (first reason wins); with tell_client, send Bye(reason)
        first so the client knows why."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        if tell_client:
            self.send(agent_pb2.AgentMessage(bye=agent_pb2.Bye(reason=reason)))
        self.ended.set()
        self._outbox.put_nowait(None)

    async def close(self) -> None:
        """Run every cleanup once, newest first. Safe to call more than once."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.end(self.end_reason or "closed")
        log.info("session %s: ending (%s)", self.id, self.end_reason)
        while self._cleanups:
            what, callback = self._cleanups.pop()
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("session %s: cleanup %s failed", self.id, what)
        self.closed.set()


class SessionRegistry:
    """Live sessions by ID, so unary calls can find theirs from the mirrord-session header."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}

    def add(self, session: AgentSession) -> None:
        self._sessions[session.id] = session

    def remove(self, session: AgentSession) -> None:
        self._sessions.pop(session.id, None)

    def get(self, session_id: str) -> AgentSession | None:
        return self._sessions.get(session_id)

    def all(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)
