"""Resolving a Hello's Target to a process, watching it, and reading its environment."""

import asyncio
import os
from collections.abc import Callable

from mirrord.agent.cgroup import find_container_pid, normalize_container_id
from mirrord.agent.creds import acting_as, target_creds
from mirrord.v1 import agent_pb2


class TargetError(Exception):
    """The target does not exist (maps to NOT_FOUND) or is invalid."""


def resolve_target(target: agent_pb2.Target) -> int | None:
    """The target's PID, or None for targetless."""
    kind = target.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "pid":
        pid = target.pid
        if pid <= 0:
            raise TargetError(f"invalid target pid {pid}")
        if not os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"target process {pid} does not exist on the agent's host")
        return pid
    cid = normalize_container_id(target.container_id)
    found = find_container_pid(cid)
    if found is None:
        raise TargetError(
            f"no process of container {cid or '(empty id)'} found in /proc/*/cgroup "
            "(is the agent on the pod's node, with hostPID?)"
        )
    return found


class ProcessWatch:
    """Calls `on_exit` once when the process exits, via a pidfd (works for non-children, no
    polling). Opened before the session starts using the PID, so a reused PID is noticed:
    the pidfd refers to the original process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError as e:
            raise TargetError(f"target process {pid} does not exist on the agent's host") from e
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, on_exit: Callable[[], None]) -> None:
        assert self._fd is not None
        self._loop = asyncio.get_running_loop()
        fd = self._fd

        def _readable() -> None:
            self.close()
            on_exit()

        self._loop.add_reader(fd, _readable)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None


def read_environ(pid: int | None) -> list[tuple[str, str]]:
    """The target's environment as (name, value) pairs in /proc/PID/environ order (None: ours).

    Decoded as UTF-8 with errors="replace": protobuf strings must be valid UTF-8, so bytes
    that are not become U+FFFD rather than failing the whole call. Entries without '=' are
    skipped. /proc/PID/environ shows the environment the process was exec'd with; later
    setenv() calls inside it are not visible (the same holds for upstream mirrord).
    """
    if pid is None:
        raw = b"\0".join(k + b"=" + v for k, v in os.environb.items())
    else:
        try:
            # As the target's user: the file is 0400 and its own, and the agent has no
            # CAP_DAC_OVERRIDE (creds.py).
            with acting_as(target_creds(pid)), open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetError(f"target process {pid} is gone") from e
        except PermissionError as e:  # CredentialsError says which capability is missing
            raise PermissionError(
                e.errno, f"cannot read the environment of target process {pid}: {e.strerror}"
            ) from e
    pairs: list[tuple[str, str]] = []
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if not sep or not name:
            continue
        pairs.append((name.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return pairs
