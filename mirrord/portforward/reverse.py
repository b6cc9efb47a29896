"""`-R [REMOTE_PORT:]LOCAL_PORT`: the target's incoming traffic on REMOTE_PORT, mirrored or
stolen (`feature.network.incoming.mode`, upstream's default: mirror; `http_filter` for a
steal), delivered to 127.0.0.1:LOCAL_PORT here.

The subscriptions are `mirrord exec`'s (features/incoming/client.py, with the same options
as features/incoming/delivery.py gives them): the agent's rules, node traffic taken, a
Kubernetes target's probes left to the pod in a steal, rules removed when a subscription or
the session ends. Each delivered connection is relayed to a new loopback connection to
LOCAL_PORT over its gRPC stream (no direct delivery: nothing here is traced, so there is no
program socket to hand the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from mirrord.client import AgentClient
from mirrord.client.errors import AgentError, AgentLost
from mirrord.client.probes import ProbeSpec
from mirrord.config import MirrordConfig
from mirrord.features.incoming.client import (
    HttpFilterSpec,
    IncomingClient,
    IncomingConnection,
    IncomingUnavailable,
    PortTaken,
    Subscription,
)
from mirrord.features.incoming.delivery import IncomingSettings, deliver_down, deliver_up
from mirrord.portforward.specs import PortForwardError, ReverseSpec
from mirrord.say import say as _say

log = logging.getLogger("mirrord.portforward")

CHUNK = 256 * 1024
SUBSCRIBE_TIMEOUT_S = 30.0


def reverse_settings(config: MirrordConfig) -> tuple[IncomingSettings, str | None]:
    """The incoming settings -R uses, and a note for the user (or None). As upstream's
    port-forward: the config's mode (default mirror) and HTTP filter; `incoming: off`
    (or `network: false`) mirrors, as upstream's `is_steal()` is false then."""
    from mirrord.features.incoming.config import incoming_config

    found = incoming_config(config)
    if found is None:
        note = "feature.network.incoming is off in the config; -R mirrors (as upstream does)"
        return IncomingSettings(nftables=config.agent.nftables), note
    return found[1], None


@dataclass
class _Counts:
    delivered: int = 0
    failed: int = 0
    last_error: str = ""


class ReverseForwarder:
    """Subscriptions for -R and the delivery of their connections."""

    def __init__(self, client: AgentClient, settings: IncomingSettings) -> None:
        self._client = client
        self._incoming = IncomingClient(client)
        self.settings = settings
        self._subs: list[tuple[ReverseSpec, Subscription]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[ReverseSpec, _Counts] = {}

    async def subscribe(self, specs: Sequence[ReverseSpec]) -> None:
        """Subscribe to every remote port; PortForwardError (and nothing subscribed) when one
        is refused."""
        mode = self.settings.mode
        flt = self.settings.http_filter if mode == "steal" else None
        try:
            for spec in specs:
                probes = [p for p in self._client.target_probes if p.port == spec.remote_port]
                if mode == "steal" and probes:
                    described = "; ".join(p.describe() for p in probes)
                    whole = any(p.kind == "tcp" for p in probes)
                    what = "connections" if whole else "requests"
                    _say(
                        f"left to the pod: its {described}: the node's probe {what} are not stolen"
                    )
                sub = await self._subscribe(spec, flt, probes if mode == "steal" else ())
                self._subs.append((spec, sub))
                self._counts[spec] = _Counts()
        except BaseException:
            await self.close(quiet=True)
            raise

    async def _subscribe(
        self, spec: ReverseSpec, flt: HttpFilterSpec | None, probes: Sequence[ProbeSpec]
    ) -> Subscription:
        what = f"-R {spec.remote_port}:{spec.local_port}"
        try:
            return await self._incoming.subscribe(
                spec.remote_port,
                self.settings.mode,
                flt,
                include_node_traffic=True,
                probes=probes,
                ignore_localhost=self.settings.ignore_localhost,
                nftables=self.settings.nftables,
                timeout=SUBSCRIBE_TIMEOUT_S,
            )
        except PortTaken as e:
            raise PortForwardError(
                f"{what}: port {spec.remote_port} of the target is taken: {e}"
            ) from None
        except IncomingUnavailable as e:
            raise PortForwardError(f"{what}: {e}") from None
        except AgentLost as e:
            raise PortForwardError(f"lost the agent: {e}") from None
        except AgentError as e:
            raise PortForwardError(f"{what}: {e}") from None
        except TimeoutError:
            raise PortForwardError(
                f"{what}: the agent did not confirm the subscription within "
                f"{SUBSCRIBE_TIMEOUT_S:g}s"
            ) from None

    async def serve(self) -> str:
        """Deliver until a subscription ends; the reason (cancel the task to stop)."""
        loops = [asyncio.ensure_future(self._serve(spec, sub)) for spec, sub in self._subs]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for t in loops:
                t.cancel()

    async def _serve(self, spec: ReverseSpec, sub: Subscription) -> str:
        try:
            while True:
                conn = await sub.accept()
                self._counts[spec].delivered += 1
                task = asyncio.get_running_loop().create_task(self._deliver(spec, conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except AgentError as e:
            if (lost := self._client.lost_error()) is not None:
                return f"lost the agent: {lost}"
            return f"-R {spec.remote_port}:{spec.local_port}: {e}"

    async def _deliver(self, spec: ReverseSpec, conn: IncomingConnection) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", spec.local_port, limit=CHUNK
            )
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(deliver_down(conn, writer), deliver_up(conn, reader))
        except OSError as e:
            counts = self._counts[spec]
            counts.failed += 1
            counts.last_error = os.strerror(e.errno) if e.errno else str(e)
            if counts.failed == 1:
                _say(
                    f"-R {spec.remote_port}:{spec.local_port}: cannot deliver a connection to "
                    f"127.0.0.1:{spec.local_port}: {counts.last_error} (said once; counted "
                    "at the end)"
                )
        finally:
            if writer is not None:
                writer.close()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self, *, quiet: bool = False) -> None:
        """End the subscriptions (the agent removes their rules) and the deliveries."""
        for _, sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if not quiet:
            for spec, counts in self._counts.items():
                if counts.failed:
                    _say(
                        f"-R {spec.remote_port}:{spec.local_port}: {counts.failed} of "
                        f"{counts.delivered} connections could not be delivered to "
                        f"127.0.0.1:{spec.local_port} (last: {counts.last_error})"
                    )
        self._subs.clear()
