"""One port of one target that several sessions take at once: filtered steals and mirrors
(upstream needs its paid operator for this; our agent sees every session on its node).

A share owns the agent's listener and the redirect rules, in a chain pair of its own (not
of a session: a member's end must leave the others' redirect in place), and its members:
the sessions' subscriptions, in the order they joined. Per accepted connection:
- one member: its own handling, as for a port no one shares (subscription.py);
- several: each mirror member gets a copy of what the peer sends; the requests go, one by
  one (HTTP/1.x) or stream by stream (HTTP/2), to the first filtered steal whose filter
  matches (the first subscribed wins on overlap), and those no filter matches to the pod.
  Membership is read per request: a member that left gets nothing more, and the others'
  traffic on the same connection goes on.
An unfiltered steal takes a port alone and never joins a share (service.py refuses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mirrord.agent.incoming import hooked, relay
from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.http1 import FilteredConnection
from mirrord.agent.incoming.http_filter import Request, RequestFilter
from mirrord.agent.incoming.rules import PortRules, SessionChains
from mirrord.agent.incoming.sockets import original_destination, relayed
from mirrord.agent.incoming.subscription import unmapped

if TYPE_CHECKING:
    from mirrord.agent.incoming.subscription import Subscription

log = logging.getLogger(__name__)


class FirstMatch:
    """The shared router: the first member (in joining order) whose filter matches."""

    def __init__(self, members: Callable[[], list[Subscription]], from_node: bool) -> None:
        self._members = members
        self._from_node = from_node

    def route(self, request: Request) -> str | None:
        for member in self._members():
            flt: RequestFilter | None = member.filter
            if self._from_node and member.node_filter is not None:
                flt = member.node_filter  # its probes' requests stay with the pod
            if member.rules.mode == "steal" and flt is not None and flt.matches(request):
                return member.id
        return None


class _Tee:
    """The peer's reader, copying every chunk to the mirror members' deliveries (best
    effort, as relay.mirror: a copy that falls behind is dropped, never slows the peer)."""

    def __init__(self, reader: asyncio.StreamReader, copies: dict[Delivery, Subscription]):
        self.reader = reader
        self.copies = copies

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        for delivery, member in list(self.copies.items()):
            try:
                delivery.to_client.put_nowait(data or None)
            except asyncio.QueueFull:
                log.warning("mirrored connection %s: client too slow, copy dropped", delivery.id)
                member.copies_dropped += 1
                delivery.close()
                del self.copies[delivery]
        return data


class PortShare:
    def __init__(
        self,
        key: tuple[int, int],
        listener: socket.socket,
        rules: PortRules,
        remove_rules: Callable[[PortShare], Awaitable[None]],
    ) -> None:
        self.key = key  # (target netns inode, port)
        self.id = secrets.token_hex(6)
        self.chains = SessionChains.for_session(self.id)
        self.listener = listener
        self.rules = rules
        self.members: list[Subscription] = []
        self._remove_rules = remove_rules
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await hooked.start_server(self._accepted, sock=self.listener)

    def join(self, member: Subscription) -> None:
        self.members.append(member)

    def describe(self) -> str:
        """Who holds it, for a refusal: 'a filtered steal by session 1a2b…, a mirror by …'."""
        return ", ".join(
            f"{'a filtered steal' if m.rules.mode == 'steal' else 'a mirror'} by session "
            f"{m.session_id[:12]}"
            for m in self.members
        )

    async def leave(self, member: Subscription) -> None:
        """The member is gone; the last one out removes the rules and the listener."""
        if member in self.members:
            self.members.remove(member)
        if not self.members and not self._closed:
            await self.close()

    async def close(self) -> None:
        """Remove the rules, stop accepting. The work is a task of its own: a caller that
        is cancelled (a Subscribe call that gRPC cancels as the agent stops) does not cut
        the removal short, and the session's cleanup waits for it (`closing`)."""
        self._closed = True
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def closing(self) -> None:
        """Until a close under way is done (at once if none began)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._remove_rules(self)
        if self._server is not None:
            self._server.close()
        else:
            self.listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("port %d: shared redirect removed", self.rules.port)

    def _live(self) -> list[Subscription]:
        return [m for m in self.members if not m.closed]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        members = self._live()
        log.debug(
            "port %d: shared connection for %s",
            self.rules.port,
            ", ".join(m.session_id[:12] for m in members) or "no one",
        )
        if not members:
            writer.close()
            return
        if len(members) == 1:
            await members[0].accepted(reader, writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._shared(reader, writer, members)
        except (OSError, ConnectionError, EOFError) as e:
            log.info("port %d: shared connection ended: %s", self.rules.port, e)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("port %d: shared connection failed", self.rules.port)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _shared(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        members: list[Subscription],
    ) -> None:
        sock = writer.get_extra_info("socket")
        relayed(sock)
        original = original_destination(sock)
        host, port = writer.get_extra_info("peername")[:2]
        remote = (unmapped(str(host)), int(port))
        opened: list[tuple[Subscription, Delivery]] = []
        drains: list[asyncio.Task[None]] = []
        copies: dict[Delivery, Subscription] = {}
        for member in members:
            if member.rules.mode == "mirror":
                member.connections += 1
                delivery = member.new_delivery(remote, original, filtered=False)
                opened.append((member, delivery))
                copies[delivery] = member
                if member.direct is None:  # its answers come back on the stream: dropped
                    drains.append(asyncio.ensure_future(_drop_answers(delivery)))
        tee = _Tee(reader, copies)
        # Without copies (they are only ever dropped later) the reader itself: its
        # filtered exchanges may then run in callbacks (http1_lane.py).
        peer: relay.Streams = (tee, writer) if copies else (reader, writer)  # type: ignore[assignment]

        async def open_pod() -> relay.Streams:
            # Through a member still here: a gone session's namespace worker is shut down.
            live = self._live()
            if not live:
                raise ConnectionError("every session of the port has ended")
            return await live[0].open_pod(original)

        def open_delivery(member_id: str) -> Delivery:
            member = next(m for m in self.members if m.id == member_id)
            member.connections += 1
            delivery = member.new_delivery(remote, original, filtered=True)
            opened.append((member, delivery))
            return delivery

        from_node = any(unmapped(remote[0]) in m.node for m in members)
        try:
            if any(m.rules.mode == "steal" for m in members):
                router = FirstMatch(self._live, from_node)
                await FilteredConnection(peer, router, open_pod, open_delivery).run()
            else:
                pod_reader, pod_writer = await open_pod()
                try:
                    await asyncio.gather(
                        relay.pipe(tee, pod_writer),  # type: ignore[arg-type]
                        relay.pipe(pod_reader, writer),
                    )
                finally:
                    pod_writer.close()
        finally:
            for task in drains:
                task.cancel()
            for member, delivery in opened:
                with contextlib.suppress(asyncio.QueueFull):
                    delivery.to_client.put_nowait(None)
                delivery.closed.set()
                member.forget(delivery)


async def _drop_answers(delivery: Delivery) -> None:
    while await delivery.from_client.get() is not None:
        pass
