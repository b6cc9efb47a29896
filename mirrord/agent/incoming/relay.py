"""What happens to one redirected connection: stolen whole, mirrored, or split per HTTP
request by a filter. The caller owns the sockets and the Delivery and closes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mirrord.agent.incoming.delivery import Delivery

log = logging.getLogger(__name__)

CHUNK = 64 * 1024

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OpenPod = Callable[[], Awaitable[Streams]]


async def socket_to_delivery(reader: asyncio.StreamReader, delivery: Delivery) -> None:
    while data := await reader.read(CHUNK):
        await delivery.to_client.put(data)
    await delivery.to_client.put(None)


async def delivery_to_socket(delivery: Delivery, writer: asyncio.StreamWriter) -> None:
    while (data := await delivery.from_client.get()) is not None:
        writer.write(data)
        await writer.drain()
    if not delivery.closed.is_set() and writer.can_write_eof():
        writer.write_eof()


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
    try:
        attached = await delivery.wait_attached()
    except BaseException:
        reading.cancel()
        raise
    if not attached:
        reading.cancel()
        log.warning("the client did not take stolen connection %s in time", delivery.id)
        return
    await until_closed(delivery, reading, delivery_to_socket(delivery, peer[1]))


async def mirror(peer: Streams, delivery: Delivery, pod: Streams) -> None:
    """Pass the connection through to the pod's server (already connected: the caller
    does that before announcing the copy, so the real traffic waits for nothing of ours)
    unchanged; copy what the peer sends to the client, best effort: a client that cannot
    keep up loses its copy, never slows the real traffic down. The client's answers are
    read and dropped."""
    pod_reader, pod_writer = pod
    copying = True

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
            await pod_writer.drain()
        if copying:
            with contextlib.suppress(asyncio.QueueFull):
                delivery.to_client.put_nowait(None)
        if pod_writer.can_write_eof():
            with contextlib.suppress(OSError):
                pod_writer.write_eof()

    async def drop_answers() -> None:
        while await delivery.from_client.get() is not None:
            pass

    drop = asyncio.ensure_future(drop_answers())
    try:
        await asyncio.gather(peer_to_pod(), pipe(pod_reader, peer[1]))
    finally:
        drop.cancel()
        pod_writer.close()
