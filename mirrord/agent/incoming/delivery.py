"""A connection handed to the client: two byte queues that the client's `Connection`
stream drains and fills. Queues are bounded, so a slow client slows the stolen peer down
(TCP back-pressure) instead of filling the agent's memory."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mirrord.agent.incoming.hooked import Hooked

QUEUE_CHUNKS = 64
# How long a delivered connection waits for the client to open its Connection stream.
OPEN_TIMEOUT = 10.0


class Delivery:
    def __init__(self) -> None:
        self.id = secrets.token_hex(12)
        # bytes; None = EOF (no more bytes in that direction)
        self.to_client: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.from_client: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.attached = asyncio.Event()
        self.closed = asyncio.Event()
        # Set by a relay that writes the client's bytes straight to the peer's socket
        # (the stream's reader calls it: no queue and no task in between); None = EOF.
        self.sink: Callable[[bytes | None], Awaitable[None]] | None = None
        # Set by a direct delivery (local program): the peer's bytes written straight to
        # the program's socket by their producer (a filtered connection), no queue and
        # no task in between; the end (None) still goes through `to_client`.
        self.send: Callable[[bytes], Awaitable[None]] | None = None
        # Set by a consumer that reads the program's answers itself (an HTTP/1.x filtered
        # connection), before the delivery is attached: a direct delivery then sets `recv`
        # (the next chunk, b"" at the program's EOF) and reads nothing until `to_client`
        # ended; `from_client` stays empty. One task hop and one queue less per answer.
        self.pulls_answers = False
        self.recv: Callable[[], Awaitable[bytes]] | None = None
        # With `recv`: the program's stream, which a lane (http1_lane.py) may take the
        # answers of in callbacks, and write the requests to.
        self.hooked: Hooked | None = None

    def close(self) -> None:
        """Abort: both sides stop (the stream ends, the relay is cancelled by its owner)."""
        self.closed.set()
        # Unblock a consumer waiting for data that will never come.
        for queue in (self.to_client, self.from_client):
            if queue.empty():
                queue.put_nowait(None)

    async def wait_attached(self) -> bool:
        try:
            await asyncio.wait_for(self.attached.wait(), OPEN_TIMEOUT)
        except TimeoutError:
            return False
        return not self.closed.is_set()


class DeliveryTable:
    """Deliveries of one session awaiting (or carrying) their Connection stream, by ID."""

    def __init__(self) -> None:
        self._by_id: dict[str, Delivery] = {}

    def add(self, delivery: Delivery) -> None:
        self._by_id[delivery.id] = delivery

    def discard(self, delivery: Delivery) -> None:
        self._by_id.pop(delivery.id, None)

    def attach(self, delivery_id: str) -> Delivery | None:
        delivery = self._by_id.get(delivery_id)
        if delivery is None or delivery.attached.is_set():
            return None
        # A connection that ended before the client opened its stream (a short mirrored
        # request) still hands over what was queued for it; only an empty one is gone.
        if delivery.closed.is_set() and delivery.to_client.empty():
            return None
        delivery.attached.set()
        return delivery

    def close_all(self) -> None:
        for delivery in list(self._by_id.values()):
            delivery.close()
        self._by_id.clear()
