"""The Files gRPC service: one FileOps and one small thread pool per session.

File work blocks (disk, FUSE, NFS in a real pod), so it runs on threads, never on the
event loop. Each session gets its own pool: its threads switch credentials per call
(creds.py), and a slow session cannot starve another. The pool and the root fd are
released by the session's cleanup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import stat as statmod
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from mirrord.agent.files.below import Below, subdirs
from mirrord.agent.files.ops import FileOps, to_pb
from mirrord.agent.service import session_of
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.v1 import files_pb2, files_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)
T = TypeVar("T")
WORKERS = 4
MAX_PREFETCH = 16384  # entries one Open lists below its directory, whatever is asked


class _SessionFiles:
    def __init__(self, session: AgentSession) -> None:
        self.ops = FileOps(session.pid)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            WORKERS, thread_name_prefix=f"files-{session.id[:8]}"
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.ops.close()


class FilesService(files_pb2_grpc.FilesServicer):
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self._by_session: dict[str, _SessionFiles] = {}

    async def _files(self, context: Context) -> _SessionFiles:
        session = await session_of(self.registry, context)
        files = self._by_session.get(session.id)
        if files is None:
            try:
                files = _SessionFiles(session)
            except OSError as e:  # the target is gone: its /proc/PID/root with it
                await context.abort(grpc.StatusCode.NOT_FOUND, f"target root: {e}")
                raise
            self._by_session[session.id] = files

            def release(sid: str = session.id) -> None:
                gone = self._by_session.pop(sid, None)
                if gone is not None:
                    gone.close()

            session.on_close(release, "files")
        return files

    async def Stat(self, request: files_pb2.StatRequest, context: Context) -> files_pb2.StatReply:
        files = await self._files(context)
        return await files.run(files.ops.stat, request.path, request.follow)

    async def Access(
        self, request: files_pb2.AccessRequest, context: Context
    ) -> files_pb2.ErrnoReply:
        files = await self._files(context)
        err = await files.run(files.ops.access, request.path, request.mode, request.follow)
        return files_pb2.ErrnoReply(errno=err)

    async def ReadLink(
        self, request: files_pb2.ReadLinkRequest, context: Context
    ) -> files_pb2.ReadLinkReply:
        files = await self._files(context)
        return await files.run(files.ops.readlink, request.path)

    async def Open(
        self, request: files_pb2.OpenRequest, context: Context
    ) -> AsyncIterator[files_pb2.OpenChunk]:
        files = await self._files(context)
        first, fd = await files.run(files.ops.open, request)
        if fd is None:
            yield first
            if request.prefetch and statmod.S_ISDIR(first.stat.mode) and not request.resolve:
                budget = min(request.prefetch, MAX_PREFETCH)
                start = [*subdirs(request.path, first.entries), *request.also[:budget]]
                below = Below(files.ops.root, start, budget, files.ops.creds)
                while batch := await files.run(below.next_batch):
                    yield files_pb2.OpenChunk(below=batch)
            return
        try:
            first.data = await files.run(files.ops.read_chunk, fd)
            yield first
            if len(first.data) == 0:
                return
            while data := await files.run(files.ops.read_chunk, fd):
                yield files_pb2.OpenChunk(data=data)
        finally:
            os.close(fd)

    async def Store(
        self, request_iterator: AsyncIterator[files_pb2.StoreChunk], context: Context
    ) -> files_pb2.StoreReply:
        files = await self._files(context)
        fd: int | None = None
        try:
            async for chunk in request_iterator:
                if fd is None:
                    fd = await files.run(files.ops.store_open, chunk.path)
                view = memoryview(chunk.data)
                while view:
                    n = await files.run(os.write, fd, view)
                    view = view[n:]
            if fd is None:
                return files_pb2.StoreReply(errno=errno.EINVAL)  # no path was sent
            st = await files.run(os.fstat, fd)
            return files_pb2.StoreReply(stat=to_pb(st))
        except OSError as e:
            log.warning("write-back failed: %s", e)
            return files_pb2.StoreReply(errno=e.errno or errno.EIO)
        finally:
            if fd is not None:
                os.close(fd)

    async def PathOp(
        self, request: files_pb2.PathOpRequest, context: Context
    ) -> files_pb2.ErrnoReply:
        files = await self._files(context)
        return files_pb2.ErrnoReply(errno=await files.run(files.ops.path_op, request))


def register(server: grpc.aio.Server, registry: SessionRegistry) -> None:
    files_pb2_grpc.add_FilesServicer_to_server(FilesService(registry), server)
