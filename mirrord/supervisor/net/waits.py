"""Waiting for a socket to be ready, on the asyncio loop (notify engine).

A call the supervisor performs for the program on a blocking socket (accept, recv, a
full send buffer) must wait as the program would, without holding the engine thread: the
handler defers a wait for readiness on its duplicate (`Defer(interruptible=True,
cancel_if_gone=True)`), then tries again. SO_RCVTIMEO/SO_SNDTIMEO bound the wait as they
bound the program's own call (EAGAIN).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable


async def ready(sock: socket.socket, *, write: bool, timeout: float | None) -> bool:
    """True when `sock` is readable (writable), False when `timeout` ran out first.
    Closes `sock` if the wait is cancelled (the program's call is gone)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return False
    except asyncio.CancelledError:
        _remove(loop, fd, write)
        sock.close()
        raise
    finally:
        _remove(loop, fd, write)


def _remove(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    if fd < 0:
        return
    if write:
        loop.remove_writer(fd)
    else:
        loop.remove_reader(fd)


def waiter(
    sock: socket.socket, *, write: bool, timeout: float | None
) -> Callable[[], Awaitable[bool]]:
    return lambda: ready(sock, write=write, timeout=timeout)
