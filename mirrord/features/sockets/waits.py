"""Waiting for a socket to be ready, on the asyncio loop (notify engine).

A call the supervisor performs for the program on a blocking socket (accept, recv, a
full send buffer) must wait as the program would, without holding the engine thread: the
handler defers a wait for readiness on its duplicate (`Defer(interruptible=True,
cancel_if_gone=True)`), then tries again. SO_RCVTIMEO/SO_SNDTIMEO bound the wait as they
bound the program's own call (EAGAIN).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from mirrord.supervisor.actions import Action, Defer, Fake, Memory


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


def retry_when_ready(
    sock: socket.socket, retry: Callable[[Memory], Action], *, write: bool, timeout: float | None
) -> Defer:
    """Wait as the program's blocking call would, then `retry(mem)` on the loop thread;
    EAGAIN when `timeout` (SO_RCVTIMEO/SO_SNDTIMEO) runs out. A signal for the program's
    thread ends the wait (interruptible) and cancels it: nothing was taken yet."""

    def again(ok: Any, mem: Memory) -> Action:
        if ok is not True:
            sock.close()
            return Fake(-errno.EAGAIN)
        return retry(mem)

    return Defer(
        lambda: ready(sock, write=write, timeout=timeout),
        again,
        interruptible=True,
        cancel_if_gone=True,
    )
