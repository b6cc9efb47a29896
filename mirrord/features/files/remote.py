"""What the fs handlers ask of the target's file system, and its gRPC implementation.

Handlers depend on the `RemoteFs` Protocol only, so their tests can use an in-memory fake;
`GrpcRemoteFs` speaks the `Files` service (proto/mirrord/v1/files.proto) on the agent
session's channel.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc.aio

from mirrord.features.files.structs import RemoteStat
from mirrord.v1 import files_pb2, files_pb2_grpc


class PathOp(enum.IntEnum):
    MKDIR = files_pb2.PathOpRequest.MKDIR
    UNLINK = files_pb2.PathOpRequest.UNLINK
    RMDIR = files_pb2.PathOpRequest.RMDIR
    RENAME = files_pb2.PathOpRequest.RENAME
    TRUNCATE = files_pb2.PathOpRequest.TRUNCATE
    CHMOD = files_pb2.PathOpRequest.CHMOD


@dataclass(frozen=True)
class Entry:
    name: bytes
    stat: RemoteStat
    link_target: bytes = b""


@dataclass
class Opened:
    errno: int = 0
    stat: RemoteStat | None = None
    unchanged: bool = False
    entries: list[Entry] = field(default_factory=list)


class RemoteFs(Protocol):
    async def stat(self, path: str, follow: bool) -> tuple[int, RemoteStat | None]: ...
    async def access(self, path: str, mode: int, follow: bool) -> int: ...
    async def readlink(self, path: str) -> tuple[int, bytes]: ...
    async def open(
        self,
        path: str,
        flags: int,
        mode: int,
        known: RemoteStat | None,
        sink: Callable[[bytes], object],
        resolve: int = 0,
        base: str = "",
    ) -> Opened:
        """Open remotely; a regular file's content is handed to `sink` in order.
        `resolve`/`base`: openat2's resolve flags, applied in the pod (OpenRequest)."""
        ...

    async def store(
        self, path: str, chunks: AsyncIterator[bytes]
    ) -> tuple[int, RemoteStat | None]: ...
    async def path_op(
        self,
        op: PathOp,
        path: str,
        *,
        path2: str = "",
        mode: int = 0,
        flags: int = 0,
        length: int = 0,
    ) -> int: ...


def failure_text(error: BaseException) -> str:
    """What a failed remote call says to the user: the status and its details for a gRPC
    error (its str() is a multi-line repr with the debug string), else the error itself."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"the agent: {error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


def from_pb(st: files_pb2.FileStat) -> RemoteStat:
    return RemoteStat(
        dev=st.dev,
        ino=st.ino,
        nlink=st.nlink,
        mode=st.mode,
        uid=st.uid,
        gid=st.gid,
        rdev=st.rdev,
        size=st.size,
        blksize=st.blksize,
        blocks=st.blocks,
        atime_ns=st.atime_ns,
        mtime_ns=st.mtime_ns,
        ctime_ns=st.ctime_ns,
    )


def to_pb(st: RemoteStat) -> files_pb2.FileStat:
    return files_pb2.FileStat(
        dev=st.dev,
        ino=st.ino,
        nlink=st.nlink,
        mode=st.mode,
        uid=st.uid,
        gid=st.gid,
        rdev=st.rdev,
        size=st.size,
        blksize=st.blksize,
        blocks=st.blocks,
        atime_ns=st.atime_ns,
        mtime_ns=st.mtime_ns,
        ctime_ns=st.ctime_ns,
    )


class GrpcRemoteFs:
    def __init__(
        self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], timeout: float
    ) -> None:
        self._stub = files_pb2_grpc.FilesStub(channel)
        self._md = tuple(metadata)
        self._timeout = timeout

    async def stat(self, path: str, follow: bool) -> tuple[int, RemoteStat | None]:
        r = await self._stub.Stat(
            files_pb2.StatRequest(path=path, follow=follow),
            metadata=self._md,
            timeout=self._timeout,
        )
        return r.errno, (from_pb(r.stat) if r.errno == 0 else None)

    async def access(self, path: str, mode: int, follow: bool) -> int:
        r = await self._stub.Access(
            files_pb2.AccessRequest(path=path, mode=mode, follow=follow),
            metadata=self._md,
            timeout=self._timeout,
        )
        return r.errno

    async def readlink(self, path: str) -> tuple[int, bytes]:
        r = await self._stub.ReadLink(
            files_pb2.ReadLinkRequest(path=path), metadata=self._md, timeout=self._timeout
        )
        return r.errno, r.target

    async def open(
        self,
        path: str,
        flags: int,
        mode: int,
        known: RemoteStat | None,
        sink: Callable[[bytes], object],
        resolve: int = 0,
        base: str = "",
    ) -> Opened:
        req = files_pb2.OpenRequest(path=path, flags=flags, mode=mode, resolve=resolve, base=base)
        if known is not None:
            req.known.CopyFrom(to_pb(known))
        # No deadline on the whole stream: a large file takes as long as it takes; the
        # session's pings notice a dead agent.
        call = self._stub.Open(req, metadata=self._md)
        opened: Opened | None = None
        async for chunk in call:
            if opened is None:
                opened = Opened(
                    errno=chunk.errno,
                    stat=from_pb(chunk.stat) if chunk.errno == 0 else None,
                    unchanged=chunk.unchanged,
                    entries=[Entry(e.name, from_pb(e.stat), e.link_target) for e in chunk.entries],
                )
            if chunk.data:
                sink(chunk.data)
        if opened is None:
            raise ConnectionError("the agent answered Open with no message")
        return opened

    async def store(self, path: str, chunks: AsyncIterator[bytes]) -> tuple[int, RemoteStat | None]:
        async def messages() -> AsyncIterator[files_pb2.StoreChunk]:
            first = True
            async for data in chunks:
                yield files_pb2.StoreChunk(path=path if first else "", data=data)
                first = False
            if first:  # an empty file: still name it
                yield files_pb2.StoreChunk(path=path)

        r = await self._stub.Store(messages(), metadata=self._md)
        return r.errno, (from_pb(r.stat) if r.errno == 0 else None)

    async def path_op(
        self,
        op: PathOp,
        path: str,
        *,
        path2: str = "",
        mode: int = 0,
        flags: int = 0,
        length: int = 0,
    ) -> int:
        r = await self._stub.PathOp(
            files_pb2.PathOpRequest(
                op=int(op),  # type: ignore[arg-type]
                path=path,
                path2=path2,
                mode=mode,
                flags=flags,
                length=length,
            ),
            metadata=self._md,
            timeout=self._timeout,
        )
        return r.errno
