"""What happens to one redirected connection: stolen whole, mirrored, or split per HTTP
request by a filter. The caller owns the sockets and the Delivery and closes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mirrord.agent.incoming.delivery import QUEUE_CHUNKS, Delivery

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# The longest a mirrored connection's copy waits for the pod's first answer.
HAND_OVER_DELAY = 0.005

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OpenPod = Callable[[], Awaitable[Streams]]


async def socket_to_delivery(reader: asyncio.StreamReader, delivery: Delivery) -> None:
    while data := await reader.read(CHUNK):
        await delivery.to_client.put(data)
    await delivery.to_client.put(None)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def until_closed(delivery: Delivery, *jobs: Awaitable[None]) -> None:
    """Run jobs to completion, or stop them all as soon as the delivery is aborted."""
    tasks: list[asyncio.Future[object]] = [asyncio.ensure_future(job) for job in jobs]
    closed: asyncio.Future[object] = asyncio.ensure_future(delivery.closed.wait())
    try:
        pending = set(tasks)
        while pending:
            done, _ = await asyncio.wait(pending | {closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                return
            for task in done & pending:
                pending.discard(task)
                task.result()  # a failure in one direction ends the connection
    finally:
        for task in (*tasks, closed):
            task.cancel()
        await asyncio.gather(*tasks, closed, return_exceptions=True)


async def steal(peer: Streams, delivery: Delivery) -> None:
    """Both directions between the peer and the client; the pod's server sees nothing."""
    # The peer's first bytes are read while the client opens its stream, so they leave
    # with the stream's first message (the queue is bounded: no unbounded buffering).
    reading = asyncio.ensure_future(socket_to_delivery(peer[0], delivery))
    answered = asyncio.get_running_loop().create_future()
    writer = peer[1]

    async def sink(data: bytes | None) -> None:
        # The client's bytes, straight from its stream to the socket.
        if data is None:
            if not answered.done():
                answered.set_result(None)
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
            return
        writer.write(data)
        await writer.drain()

    delivery.sink = sink
    try:
        attached = await delivery.wait_attached()
    except BaseException:
        reading.cancel()
        raise
    if not attached:
        reading.cancel()
        log.warning("the client did not take stolen connection %s in time", delivery.id)
        return
    await until_closed(delivery, reading, answered)


async def mirror(
    peer: Streams,
    delivery: Delivery,
    pod: Streams,
    hand_over: Callable[[], None] = lambda: None,
    answers_queued: bool = True,
) -> bool:
    """Pass the connection through to the pod's server (already connected: the caller
    does that before announcing the copy, so the real traffic waits for nothing of ours)
    unchanged; copy what the peer sends to the client, best effort: a client that cannot
    keep up loses its copy, never slows the real traffic down. The client's answers are
    read and dropped.

    `hand_over` gives the copy to the client. It is called once the pod's server answered
    (or the peer ended, or the copy needs to go: half the queue, HAND_OVER_DELAY), not at
    once: the client's work for the copy (its stream, the program's accept and read on
    another CPU) then does not compete with the real request on a busy node.

    `answers_queued`: the client's answers come through `delivery.from_client` (a stream
    carries them) and are drained here; a direct delivery drops them itself.

    False: the copy was dropped (the client fell behind)."""
    pod_reader, pod_writer = pod
    copying = True
    handed = False

    def hand() -> None:
        nonlocal handed
        if not handed:
            handed = True
            timer.cancel()
            hand_over()

    timer = asyncio.get_running_loop().call_later(HAND_OVER_DELAY, hand)

    async def peer_to_pod() -> None:
        nonlocal copying
        while data := await peer[0].read(CHUNK):
            pod_writer.write(data)
            if copying:
                try:
                    delivery.to_client.put_nowait(data)
                except asyncio.QueueFull:
                    copying = False
                    log.warning(
                        "mirrored connection %s: client too slow, copy dropped", delivery.id
                    )
                    delivery.close()
                if delivery.to_client.qsize() >= QUEUE_CHUNKS // 2:
                    hand()
            await pod_writer.drain()
        hand()
        if copying:
            with contextlib.suppress(asyncio.QueueFull):
                delivery.to_client.put_nowait(None)
        if pod_writer.can_write_eof():
            with contextlib.suppress(OSError):
                pod_writer.write_eof()

    async def pod_to_peer() -> None:
        while data := await pod_reader.read(CHUNK):
            peer[1].write(data)
            hand()
            await peer[1].drain()
        if peer[1].can_write_eof():
            with contextlib.suppress(OSError):
                peer[1].write_eof()

    async def drop_answers() -> None:
        while await delivery.from_client.get() is not None:
            pass

    drop = asyncio.ensure_future(drop_answers()) if answers_queued else None
    try:
        await asyncio.gather(peer_to_pod(), pod_to_peer())
    finally:
        hand()
        if drop is not None:
            drop.cancel()
        pod_writer.close()
    return copying
