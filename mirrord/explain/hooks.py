"""--explain's view of the remote files: which remote paths failed in the pod (ENOENT…).

A wrapper of the fs feature's agent client (the `RemoteFs` protocol), so the handlers
stay as they are; each path's failure is told once."""

from __future__ import annotations

import errno
from typing import Any

from mirrord.explain.record import Explainer


class ExplainedRemoteFs:
    def __init__(self, inner: Any, explain: Explainer) -> None:
        self._inner = inner
        self._explain = explain
        self._told: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _fail(self, path: str, code: int) -> None:
        if code and path not in self._told:
            self._told.add(path)
            self._explain.record(
                "file.result", path=path, result=errno.errorcode.get(code, str(code))
            )

    async def stat(self, path: str, follow: bool) -> Any:
        result = await self._inner.stat(path, follow)
        self._fail(path, result[0])
        return result

    async def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        opened = await self._inner.open(path, *args, **kwargs)
        self._fail(path, opened.errno)
        return opened
