"""TCP connections relayed without the Tcp stream, for a client on the agent's loopback.

When the client shares the agent's network namespace (HelloReply.loopback_id), it asks
`Net.Direct` for the agent's listeners on 127.0.0.1 and ::1 and its session's secret.
The program's socket itself is then connected to such a listener and opens with a
request (mirrord/wire/direct.py): the agent connects from the pod, answers, and relays
between the two sockets (agent/bridge.py). One relay and no gRPC message per connection or
chunk, instead of the client's relay plus the stream.

The local socket gets SO_LINGER 0 as soon as it is accepted: if the agent dies, the
kernel resets it, and the program sees ECONNRESET/EPIPE rather than a clean end. The
listeners exist while some session has asked for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
from typing import TYPE_CHECKING

from mirrord.agent.bridge import LINGER_OFF, LINGER_RESET, Bridge, set_linger
from mirrord.agent.net.sockets import NetSessionState
from mirrord.agent.net.tcp import connect_socket
from mirrord.agent.session import AgentSession
from mirrord.wire.direct import (
    REQUEST_SIZE,
    SECRET_SIZE,
    DirectReply,
    DirectWireError,
    decode_request,
    encode_reply,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # the client sends its request right after connecting
# Connections whose request has not come yet, at most: anyone on this host can connect, and
# each holds an fd until its timeout. Beyond it the oldest wait is dropped (a real client's
# request comes within microseconds; a flood's never does).
MAX_PENDING = 256


class DirectListeners:
    """The agent's direct listeners and the secrets of the sessions that asked for them."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, tuple[AgentSession, NetSessionState]] = {}
        self._listeners: list[socket.socket] = []
        self._ports = (0, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[asyncio.Task[None], None] = {}  # oldest first

    def open(self, session: AgentSession, state: NetSessionState) -> tuple[int, int, bytes]:
        """(IPv4 port, IPv6 port, secret) for this session; a port is 0 when that loopback
        is unusable here. The secret is forgotten, and its connections reset, when the
        session closes."""
        if not self._listeners:
            self._start()
        if state.direct_secret is None:
            secret = secrets.token_bytes(SECRET_SIZE)
            state.direct_secret = secret
            self._sessions[secret] = (session, state)
            session.on_close(lambda: self._forget(secret), "direct listeners")
        return (*self._ports, state.direct_secret)

    def _start(self) -> None:
        ports = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind((host, 0))
                sock.listen(4096)  # bursts of connects (50 threads at once…)
                sock.setblocking(False)
            except OSError as e:
                log.debug("no direct listener on %s: %s", host, e)
                sock.close()
                ports.append(0)
                continue
            self._listeners.append(sock)
            ports.append(int(sock.getsockname()[1]))
            self._spawn(self._accept_loop(sock))
        self._ports = (ports[0], ports[1])

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, secret: bytes) -> None:
        self._sessions.pop(secret, None)
        if not self._sessions:  # nobody left to connect: no listener left open
            for sock in self._listeners:
                sock.close()
            self._listeners.clear()
            self._ports = (0, 0)
            for task in list(self._tasks):
                task.cancel()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as e:
                if listener.fileno() < 0:
                    return
                log.warning("direct listener: accept failed: %s", e)  # EMFILE…
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self._pending) >= MAX_PENDING:
                oldest = next(iter(self._pending))
                del self._pending[oldest]  # its cancellation takes a few loop turns
                oldest.cancel()
                log.debug("direct listener: %d requests pending, the oldest dropped", MAX_PENDING)
            self._spawn(self._serve(conn))
            # An accept that finds a connection queued does not yield: let the new task
            # start (and count as pending) before the next one.
            await asyncio.sleep(0)

    async def _serve(self, conn: socket.socket) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._pending[me] = None
        try:
            data = await asyncio.wait_for(_recv_exactly(conn, REQUEST_SIZE), REQUEST_TIMEOUT_S)
            req = decode_request(data)
        except (OSError, TimeoutError, DirectWireError) as e:
            log.debug("direct connection refused: %s", e)
            conn.close()
            return
        except asyncio.CancelledError:
            conn.close()  # dropped (a flood) or the last session ended
            raise
        finally:
            self._pending.pop(me, None)
        found = self._sessions.get(req.secret)
        if found is None:
            log.debug("direct connection refused: no session has that secret")
            conn.close()
            return
        session, state = found
        state.adopt()  # the session's end cancels this relay (and resets both sockets)
        family = socket.AF_INET if len(req.ip) == 4 else socket.AF_INET6
        host = socket.inet_ntop(family, req.ip)
        try:
            pod = await state.tcp_socket(session, family)
        except OSError as e:
            _refuse(conn, e.errno or errno.EMFILE)
            return
        try:
            # No timeout of our own: the pod's kernel decides (tcp_syn_retries).
            await connect_socket(pod, (host, req.port))
            name = pod.getsockname()
            with contextlib.suppress(OSError):
                pod.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local_ip = socket.inet_pton(family, name[0].split("%")[0])
            conn.send(encode_reply(DirectReply(0, local_ip, name[1])))
        except OSError as e:
            pod.close()
            _refuse(conn, e.errno or errno.ECONNREFUSED)
            return
        except BaseException:
            pod.close()
            conn.close()
            raise
        await _relay(pod, conn)


def _refuse(conn: socket.socket, err: int) -> None:
    """Tell the pod's errno and close without a reset (the reply must be readable)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_OFF)
        conn.send(encode_reply(DirectReply(err)))
    conn.close()


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        more = await loop.sock_recv(sock, size - len(data))
        if not more:
            raise OSError(errno.ECONNRESET, "closed before its request")
        data += more
    return data


async def _relay(pod: socket.socket, local: socket.socket) -> None:
    """Join the two sockets until both directions ended; a failure on either side, or
    cancellation (the session's end), resets both."""
    set_linger(pod, LINGER_RESET)  # turned off again for a clean end (Bridge.close)
    bridge = Bridge()
    try:
        await bridge.attach(bridge.a, pod)
        await bridge.attach(bridge.b, local)
        await bridge.done
    finally:
        bridge.close(bridge.ended_cleanly())
        for half, sock in ((bridge.a, pod), (bridge.b, local)):
            if not bridge.joined(half):
                set_linger(sock, LINGER_RESET)
                sock.close()
