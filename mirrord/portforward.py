"""`mirrord port-forward -L [LPORT:]HOST:RPORT`: local listeners whose connections are made
from the target's network namespace (HOST resolved as the pod resolves it, per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mirrord.client import AgentClient, start_local_agent
from mirrord.proxy import NetProxy, open_stream, relay, reset

log = logging.getLogger("mirrord.portforward")


class PortForwardError(ValueError):
    pass


@dataclass(frozen=True)
class ForwardSpec:
    local_port: int
    host: str
    remote_port: int


def parse_spec(text: str) -> ForwardSpec:
    """`[LPORT:]HOST:RPORT`; an IPv6 HOST goes in brackets: `8080:[fd00::1]:80`."""
    host = ""
    rest = text
    if "[" in text:
        before, _, after = text.partition("[")
        host, _, tail = after.partition("]")
        if not tail.startswith(":"):
            raise PortForwardError(f"{text!r}: expected [LPORT:]HOST:RPORT")
        parts = [*([before.rstrip(":")] if before else []), "H", tail[1:]]
    else:
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise PortForwardError(f"{text!r}: expected [LPORT:]HOST:RPORT")
        host = parts[-2]
    if len(parts) not in (2, 3) or not host:
        raise PortForwardError(f"{text!r}: expected [LPORT:]HOST:RPORT")
    try:
        rport = int(parts[-1])
        lport = int(parts[0]) if len(parts) == 3 else rport
    except ValueError:
        raise PortForwardError(f"{text!r}: ports must be numbers") from None
    if not (0 < rport < 65536 and 0 <= lport < 65536):
        raise PortForwardError(f"{text!r}: port out of range")
    return ForwardSpec(lport, host, rport)


async def _handle(proxy: NetProxy, spec: ForwardSpec, conn: socket.socket) -> None:
    try:
        addrs = await proxy.resolve(spec.host)
        if not addrs:
            raise OSError(errno.EHOSTUNREACH, f"{spec.host} does not resolve in the target")
        call, _ = await open_stream(proxy.tcp, proxy.metadata, addrs[0], spec.remote_port)
    except OSError as e:
        log.warning("port-forward to %s:%d failed: %s", spec.host, spec.remote_port, e)
        print(f"mirrord: {spec.host}:{spec.remote_port}: {e.strerror}", file=sys.stderr)
        reset(conn)
        return
    await relay(conn, call)


async def serve(
    client: AgentClient,
    specs: Sequence[ForwardSpec],
    on_ready: Callable[[list[tuple[ForwardSpec, int]]], None] | None = None,
) -> str:
    """Serve until the agent is lost; returns the reason. Cancel the task to stop."""
    proxy = NetProxy(client.channel, client.metadata())
    loop = asyncio.get_running_loop()
    listeners: list[socket.socket] = []
    tasks: set[asyncio.Task[None]] = set()

    async def accept_loop(listener: socket.socket, spec: ForwardSpec) -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            task = loop.create_task(_handle(proxy, spec, conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    try:
        bound: list[tuple[ForwardSpec, int]] = []
        for spec in specs:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", spec.local_port))
            except OSError as e:
                raise PortForwardError(f"cannot listen on 127.0.0.1:{spec.local_port}: {e}") from e
            listener.listen(128)
            listener.setblocking(False)
            bound.append((spec, int(listener.getsockname()[1])))
        acceptors = [
            loop.create_task(accept_loop(lst, spec))
            for lst, (spec, _) in zip(listeners, bound, strict=True)
        ]
        if on_ready is not None:
            on_ready(bound)
        try:
            return await asyncio.shield(client.lost)
        finally:
            for a in acceptors:
                a.cancel()
    finally:
        for lst in listeners:
            lst.close()
        for t in list(tasks):
            t.cancel()
        await proxy.close()


async def run_port_forward(
    specs: Sequence[ForwardSpec],
    target_pid: int | None,
    *,
    agent_address: str | None = None,
    agent_token: str | None = None,
    startup_timeout: float = 10.0,
) -> int:
    """The CLI's body: start or reach an agent, serve until SIGINT/SIGTERM or agent loss."""
    local_agent = None
    client: AgentClient | None = None
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        if agent_address is None:
            local_agent = await start_local_agent(
                ping_timeout=10.0, startup_timeout=startup_timeout
            )
            agent_address, agent_token = local_agent.address, local_agent.token
        client = await AgentClient.connect(
            agent_address, agent_token or "", target_pid, timeout=startup_timeout
        )

        def ready(bound: list[tuple[ForwardSpec, int]]) -> None:
            for spec, port in bound:
                print(
                    f"mirrord: forwarding 127.0.0.1:{port} -> {spec.host}:{spec.remote_port} "
                    "(from the target)",
                    file=sys.stderr,
                    flush=True,
                )

        server = loop.create_task(serve(client, specs, ready))
        waiting: set[asyncio.Future[Any]] = {server, stop}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            reason = server.result()
            print(f"mirrord: lost the agent: {reason}", file=sys.stderr)
            return 1
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if client is not None:
            await client.close()
        if local_agent is not None:
            await local_agent.stop()
