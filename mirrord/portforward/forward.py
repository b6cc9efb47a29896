"""`-L [LPORT:]HOST:RPORT`: listeners on 127.0.0.1 here; each connection is made by the agent
from the target's network namespace (HOST resolved per connection, as the pod resolves it)
and relayed on its own `Net.Tcp` stream."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence

import grpc.aio

from mirrord.client import AgentClient
from mirrord.features.outgoing.proxy import NetProxy, open_stream, relay
from mirrord.features.sockets.reset import reset
from mirrord.portforward.specs import ForwardSpec, PortForwardError
from mirrord.say import say

log = logging.getLogger("mirrord.portforward")


def bind_listeners(specs: Sequence[ForwardSpec]) -> list[socket.socket]:
    """One listening socket per spec, bound before the agent is reached: a port in use is
    said at once (PortForwardError), not after the agent's start-up."""
    listeners: list[socket.socket] = []
    try:
        for spec in specs:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", spec.local_port))
            except OSError as e:
                why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise PortForwardError(
                    f"-L {spec.local_port}:{spec.host}:{spec.remote_port}: cannot listen on "
                    f"127.0.0.1:{spec.local_port}: {why}"
                ) from None
            listener.listen(128)
            listener.setblocking(False)
    except BaseException:
        for lst in listeners:
            lst.close()
        raise
    return listeners


class _Failed(Exception):
    """A connection's failure, as said to the user."""


async def _addresses(proxy: NetProxy, host: str) -> list[bytes]:
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host).packed]
    return await proxy.resolve(host)


async def _handle(proxy: NetProxy, spec: ForwardSpec, conn: socket.socket) -> None:
    """One local connection: resolve HOST in the target, connect from there, relay. A
    failure resets the local connection and is said (the pod's errno, by name)."""
    where = f"{spec.host}:{spec.remote_port}"
    try:
        addrs = await _addresses(proxy, spec.host)
        if not addrs:
            raise _Failed(f"{spec.host} does not resolve in the target")
        call, _ = await open_stream(proxy.tcp, proxy.metadata, addrs[0], spec.remote_port)
    except (_Failed, OSError, grpc.aio.AioRpcError) as e:
        if isinstance(e, grpc.aio.AioRpcError):
            why = f"the agent did not answer ({e.code().name})"
        elif isinstance(e, OSError):
            why = os.strerror(e.errno) if e.errno else str(e)
        else:
            why = str(e)
        log.debug("port-forward to %s failed: %s", where, e)
        say(f"-L {spec.local_port}: {where}: {why}")
        reset(conn)
        return
    await relay(conn, call)


async def serve_forwards(
    client: AgentClient, specs: Sequence[ForwardSpec], listeners: Sequence[socket.socket]
) -> None:
    """Accept and relay until cancelled; closes the listeners and resets the connections
    in flight when it ends."""
    proxy = NetProxy(client.channel, client.metadata())
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def accept_loop(listener: socket.socket, spec: ForwardSpec) -> None:
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE, ENOBUFS...: the listener stays; try again
                log.warning("-L %d: accept failed: %s", spec.local_port, e)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(_handle(proxy, spec, conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptors = [
        loop.create_task(accept_loop(lst, spec)) for lst, spec in zip(listeners, specs, strict=True)
    ]
    try:
        await asyncio.gather(*acceptors)
    finally:
        for a in acceptors:
            a.cancel()
        for lst in listeners:
            lst.close()
        pending = list(tasks)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        await proxy.close()
