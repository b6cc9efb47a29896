"""A local TCP listener whose connections are carried to a pod's port by the API server.

Each accepted connection opens its own websocket to `pods/NAME/portforward?ports=P`
(subprotocol `v4.channel.k8s.io`, kubernetes-asyncio's WsApiClient). Framing, as the kubelet
speaks it: every binary message starts with a channel byte; for one port, channel 0 carries
data and channel 1 errors; the first message the server sends on each channel is the port
number (2 bytes, little endian), not data. What we send is `b"\\x00" + bytes`. The protocol has
no half-close, so the first side to finish closes the whole connection.

gRPC opens one TCP connection per channel, so one session uses one websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.stream import WsApiClient

from mirrord.kube.api import KubeApi
from mirrord.kube.errors import KubeError

log = logging.getLogger(__name__)

DATA_CHANNEL = 0
ERROR_CHANNEL = 1
_CHUNK = 64 * 1024


class PortForward:
    def __init__(self, api: KubeApi, namespace: str, pod: str, port: int) -> None:
        self.namespace, self.pod, self.port = namespace, pod, port
        self._api = api
        self._ws_client = WsApiClient(configuration=api.client.configuration)
        # Typed for its REST use; with a WsApiClient it returns a websocket context.
        self._core: Any = CoreV1Api(self._ws_client)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []  # what the API server or kubelet reported, newest last
        # Set when the API server refused a port-forward for good (403: RBAC, 404: no
        # such pod): retrying cannot help, so the session fails at once.
        self.refused = asyncio.Event()

    async def start(self) -> str:
        """Listen on 127.0.0.1:0; returns HOST:PORT."""
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = f"port {self.port} of pod {self.namespace}/{self.pod}"
        try:
            for attempt in (1, 2):
                generation = self._api.credentials_generation
                try:
                    ctx = await self._core.connect_get_namespaced_pod_portforward(
                        self.pod, self.namespace, ports=str(self.port), _preload_content=False
                    )
                    async with ctx as ws:
                        await self._pump(ws, reader, writer, where)
                    return
                except aiohttp.WSServerHandshakeError as exc:
                    # An exec plugin's token that expired: fetch a new one, as kubectl does.
                    retry = exc.status == 401 and attempt == 1
                    if retry and await self._api.reauthenticate(generation):
                        continue
                    raise
        except aiohttp.WSServerHandshakeError as exc:
            self.errors.append(
                f"the API server refused the port-forward to {where}: {exc.status} {exc.message}"
                + (" (forbidden: you need `create pods/portforward`)" if exc.status == 403 else "")
            )
            if exc.status in (403, 404):
                self.refused.set()
        except (aiohttp.ClientError, OSError) as exc:
            self.errors.append(f"port-forward to {where} failed: {exc}")
        except KubeError as exc:  # the exec plugin failed
            self.errors.append(f"port-forward to {where}: {exc}")
            self.refused.set()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pump(
        self, ws: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        async def upstream() -> None:
            while data := await reader.read(_CHUNK):
                await ws.send_bytes(bytes([DATA_CHANNEL]) + data)

        async def downstream() -> None:
            headers_seen: set[int] = set()
            error = b""
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                channel, payload = msg.data[0], msg.data[1:]
                if channel not in headers_seen:
                    headers_seen.add(channel)  # the 2-byte port number
                    payload = payload[2:]
                if channel == DATA_CHANNEL and payload:
                    writer.write(payload)
                    await writer.drain()
                elif channel == ERROR_CHANNEL:
                    error += payload
            if error:
                self.errors.append(f"port-forward to {where}: {error.decode(errors='replace')}")

        up = asyncio.ensure_future(upstream())
        down = asyncio.ensure_future(downstream())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            await ws.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self._ws_client.close()
