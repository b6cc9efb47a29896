"""What the fs handlers ask of the target's file system, and its gRPC implementation.

Handlers depend on the `RemoteFs` Protocol only, so their tests can use an in-memory fake;
`GrpcRemoteFs` speaks the `Files` service (proto/mirrord/v1/files.proto) on the agent
session's channel.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import stat as statmod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import grpc.aio

from mirrord.features.files.structs import RemoteStat
from mirrord.v1 import files_pb2, files_pb2_grpc

log = logging.getLogger("mirrord.fs")
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # (not in grpc's stubs)


class PathOp(enum.IntEnum):
    MKDIR = files_pb2.PathOpRequest.MKDIR
    UNLINK = files_pb2.PathOpRequest.UNLINK
    RMDIR = files_pb2.PathOpRequest.RMDIR
    RENAME = files_pb2.PathOpRequest.RENAME
    TRUNCATE = files_pb2.PathOpRequest.TRUNCATE
    CHMOD = files_pb2.PathOpRequest.CHMOD


class Entry(NamedTuple):
    """One per listed entry: a tuple, cheap to make."""

    name: bytes
    stat: RemoteStat
    link_target: bytes = b""


@dataclass(frozen=True)
class Listing:
    """A directory listed after an opened one (Open's prefetch): its path, its stat, and
    its entries, converted only if the program opens it."""

    path: str
    stat: RemoteStat
    load: Callable[[], list[Entry]]


@dataclass
class Opened:
    errno: int = 0
    stat: RemoteStat | None = None
    unchanged: bool = False
    entries: list[Entry] = field(default_factory=list)
    below_follows: bool = False  # listings are coming (`below`), then `below_end`


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
        prefetch: int = 0,
        also: Sequence[str] = (),
        below: Callable[[list[Listing]], None] | None = None,
        below_end: Callable[[], None] | None = None,
    ) -> Opened:
        """Open remotely; a regular file's content is handed to `sink` in order.
        `resolve`/`base`: openat2's resolve flags, applied in the pod (OpenRequest).
        For a directory, `prefetch` entries of the directories below it and of those in
        `also` are listed too, handed to `below` as they come after open() returned
        (`Opened.below_follows`), then `below_end` is called."""
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
    # Positional: one is made per listed entry.
    return RemoteStat(
        st.dev, st.ino, st.nlink, st.mode, st.uid, st.gid, st.rdev, st.size, st.blksize,
        st.blocks, st.atime_ns, st.mtime_ns, st.ctime_ns,
    )  # fmt: skip


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


def _entries(entries: Iterable[files_pb2.DirEntry]) -> list[Entry]:
    return [Entry(e.name, from_pb(e.stat), e.link_target) for e in entries]


async def _listings(
    call: Any, below: Callable[[list[Listing]], None], end: Callable[[], None] | None
) -> None:
    """The rest of a directory's Open: the prefetched listings, handed on as they come.
    Best effort: a failure ends them quietly (the program's opens then ask themselves)."""
    try:
        while (chunk := await call.read()) is not _EOF:
            assert isinstance(chunk, files_pb2.OpenChunk)
            below(
                [
                    Listing(d.path, from_pb(d.stat), functools.partial(_entries, d.entries))
                    for d in chunk.below
                ]
            )
    except asyncio.CancelledError:
        call.cancel()
        raise
    except Exception as e:
        log.debug("prefetched listings ended: %s", failure_text(e))
    finally:
        if end is not None:
            end()


class GrpcRemoteFs:
    def __init__(
        self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], timeout: float
    ) -> None:
        self._stub = files_pb2_grpc.FilesStub(channel)
        self._md = tuple(metadata)
        self._timeout = timeout
        self._prefetching: set[asyncio.Future[None]] = set()

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
        prefetch: int = 0,
        also: Sequence[str] = (),
        below: Callable[[list[Listing]], None] | None = None,
        below_end: Callable[[], None] | None = None,
    ) -> Opened:
        req = files_pb2.OpenRequest(
            path=path,
            flags=flags,
            mode=mode,
            resolve=resolve,
            base=base,
            prefetch=prefetch if below is not None else 0,
            also=also,
        )
        if known is not None:
            req.known.CopyFrom(to_pb(known))
        # No deadline on the whole stream: a large file takes as long as it takes; the
        # session's pings notice a dead agent.
        call = self._stub.Open(req, metadata=self._md)
        first = await call.read()
        if first is _EOF:
            raise ConnectionError("the agent answered Open with no message")
        assert isinstance(first, files_pb2.OpenChunk)
        opened = Opened(
            errno=first.errno,
            stat=from_pb(first.stat) if first.errno == 0 else None,
            unchanged=first.unchanged,
            entries=_entries(first.entries),
        )
        if first.data:
            sink(first.data)
        directory = opened.stat is not None and statmod.S_ISDIR(opened.stat.mode)
        if req.prefetch and below is not None and directory:
            # The program goes on; the listings below come in meanwhile.
            task = asyncio.ensure_future(_listings(call, below, below_end))
            self._prefetching.add(task)
            task.add_done_callback(self._prefetching.discard)
            opened.below_follows = True
            return opened
        while True:
            chunk = await call.read()
            if chunk is _EOF:
                return opened
            assert isinstance(chunk, files_pb2.OpenChunk)
            if chunk.data:
                sink(chunk.data)

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
