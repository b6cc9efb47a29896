"""The filtered steal's fast path in callbacks: plain HTTP/1.1 requests to the pod's
server or to local programs (direct deliveries), and their answers, forwarded as the bytes
come, in the streams' own callbacks (hooked.py). No task wakes up per request or per
answer; on this path that was a quarter of the agent's CPU per request.

The lane runs only what is simple, and hands back (`Handback`) to the connection's task
at anything else: a request for a side not opened yet (or one reached through gRPC), one
that is not plain, an end or a loss on any side, an answer the peer does not take as fast
as it comes, a framing error. The task goes on from exactly there with the state handed
back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from mirrord.agent.incoming.hooked import Hooked
from mirrord.agent.incoming.http1_framing import (
    FAST_BODY,
    MAX_HEAD,
    FramingError,
    RequestHead,
    ResponseFramer,
    request_at,
)
from mirrord.agent.incoming.http_filter import Request

# Pipelined bytes held while an answer is awaited; past this the peer is paused.
HELD = MAX_HEAD + FAST_BODY
# Bytes the peer's transport may buffer before the lane leaves the answer to the task,
# which waits for them to drain (flow control).
PEER_BUFFERED = 256 * 1024


@dataclass
class Handback:
    buf: bytearray  # the peer's bytes not forwarded yet
    key: str | None = None  # the side whose answer is under way (None: the pod), if one is
    framer: ResponseFramer | None = None  # that answer's framing so far (None: no answer)
    close: bool = False  # its request asked to close the connection after it
    pending: dict[str | None, bytearray] = field(default_factory=dict)  # sides' bytes not sent on
    error: Exception | None = None


class Http1Lane:
    def __init__(
        self,
        peer: Hooked,
        sides: dict[str | None, Hooked],
        route: Callable[[Request], str | None],
        count: Callable[[str | None], None],
        buf: bytearray,
    ) -> None:
        """peer and sides (by route key, None: the pod): streams idle (nothing unread);
        route: a request's key; count: a request forwarded, by its key."""
        assert peer.transport is not None
        self._peer = peer
        self._peer_t = peer.transport
        self._sides = sides
        self._keys = {id(h): k for k, h in sides.items()}
        self._route = route
        self._count = count
        self._buf = buf
        self._key: str | None = None
        self._framer: ResponseFramer | None = None
        self._close = False
        self._pending: dict[str | None, bytearray] = {}
        self._paused = False
        self.done: asyncio.Future[Handback] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._peer.lane = self
        for side in self._sides.values():
            side.lane = self
        self._requests()

    def detach(self) -> None:
        """Stop taking bytes (the owner's task is cancelled, or the lane handed back)."""
        for stream in (self._peer, *self._sides.values()):
            if stream.lane is self:
                stream.lane = None
        if self._paused:
            self._paused = False
            self._peer_t.resume_reading()

    def _hand_back(self, error: Exception | None = None) -> None:
        self.detach()
        if not self.done.done():
            self.done.set_result(
                Handback(self._buf, self._key, self._framer, self._close, self._pending, error)
            )

    # --- callbacks ------------------------------------------------------------------------

    def take(self, stream: Hooked, data: bytes) -> None:
        if stream is self._peer:
            self._buf += data
            if self._framer is None:
                self._requests()
            elif len(self._buf) > HELD and not self._paused:
                self._paused = True
                self._peer_t.pause_reading()
            return
        key = self._keys[id(stream)]
        self._pending.setdefault(key, bytearray()).extend(data)
        if self._framer is not None and key == self._key:
            self._answer()

    def ended(self, stream: Hooked) -> None:
        self._hand_back()

    # --- the work -------------------------------------------------------------------------

    def _requests(self) -> None:
        """The next request, if all of it is here: to its side."""
        buf = self._buf
        req = request_at(buf)
        if not isinstance(req, RequestHead):
            if req is None:
                self._hand_back()  # not plain: h11's
            return  # or more to come
        need = req.size + req.body
        key = self._route(Request(req.method, req.target, req.headers))
        side = self._sides.get(key)
        if side is None or side.transport is None:
            self._hand_back()  # a side the task opens first (or reaches through gRPC)
            return
        self._count(key)
        side.transport.write(bytes(buf[:need]))
        del buf[:need]
        self._key = key
        self._framer = ResponseFramer(req.method == "HEAD")
        self._close = req.close
        if self._pending.get(key):
            self._answer()

    def _answer(self) -> None:
        """Forward what belongs to the answer under way; at its end, the next request."""
        key, framer = self._key, self._framer
        assert framer is not None
        pending = self._pending[key]
        try:
            n = framer.take(pending)
        except FramingError as e:  # the task fails the connection with it
            self._hand_back(e)
            return
        if n:
            self._peer_t.write(bytes(pending[:n]))
            del pending[:n]
        if not framer.done:
            if self._peer_t.get_write_buffer_size() > PEER_BUFFERED:
                self._hand_back()  # the task waits for the peer to take it
            return
        if not framer.keep_alive or self._close or self._peer_t.get_write_buffer_size():
            self._hand_back()  # the task ends the connection, or waits for the peer
            return
        self._key, self._framer, self._close = None, None, False
        if self._paused:
            self._paused = False
            self._peer_t.resume_reading()
        self._requests()
