"""The rules watchdog: removes an agent's chains when the agent dies without removing them
(SIGKILL, OOM kill, a crash), so a target's port is never left redirected to a dead
listener (connection refused for the pod's own clients until some later session).

The agent starts it before installing its first chains: a separate process in its own
session, so a signal to the agent's process group spares it. It reads one line per netns
the agent installs chains in ("watch PID NETNS-INODE BACKEND") from a pipe whose write end
only the agent holds. End of file means the agent's process is gone: the watchdog removes
the chains this agent owns (by the owner tag in their jump rules) in each of those netns,
skipping one whose PID now names another netns (the target died). "done" before the end
means the agent's last chains were removed normally: it just exits. In a Kubernetes agent
container whose PID 1 is the agent, the container's end takes the watchdog too; the next
session on the target removes the leftovers then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from mirrord.agent.incoming import iptables
from mirrord.agent.incoming.rules import Owner
from mirrord.agent.namespaces import net_ns_inode

log = logging.getLogger(__name__)


class RuleWatchdog:
    """The agent's side: a watchdog runs while any session of this service has chains."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._told: set[tuple[int, str]] = set()
        self._users = 0

    async def watch(self, pid: int, backend: str) -> None:
        """Before chains go into the netns of `pid` with `backend`: from now on a death of
        this agent removes them; `release()` once they are removed. A watchdog that cannot
        start is logged, not fatal."""
        self._users += 1
        try:
            inode = net_ns_inode(pid)
            if (inode, backend) in self._told:
                return
            proc = await self._started()
            assert proc.stdin is not None
            proc.stdin.write(f"watch {pid} {inode} {backend}\n".encode())
            self._told.add((inode, backend))
        except OSError as e:
            log.warning("rules watchdog unavailable (%s): a killed agent leaves its rules", e)

    def release(self) -> None:
        """A session's chains are gone: with none left the watchdog ends without sweeping
        (a sweep then could take chains a new session is installing)."""
        self._users -= 1
        if self._users > 0 or self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._told.clear()
        assert proc.stdin is not None
        proc.stdin.write(b"done\n")
        proc.stdin.close()
        reaping = asyncio.get_running_loop().create_task(proc.wait())
        _REAPING.add(reaping)
        reaping.add_done_callback(_REAPING.discard)

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._told.clear()
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                iptables.this_agent().tag(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        return self._proc


_REAPING: set[asyncio.Task[int]] = set()  # tasks are weakly held by the loop


def _read_watched() -> list[tuple[int, int, str]] | None:
    """The netns to sweep once the agent is gone; None when it said it is done."""
    watched: list[tuple[int, int, str]] = []
    for line in sys.stdin.buffer:  # until the agent is gone
        words = line.decode(errors="replace").split()
        if words == ["done"]:
            return None
        try:
            verb, pid, inode, backend = words
            if verb == "watch" and backend in iptables.BACKENDS:
                watched.append((int(pid), int(inode), backend))
        except ValueError:
            continue
    return watched


async def sweep(owner: Owner, watched: list[tuple[int, int, str]]) -> list[str]:
    """Remove `owner`'s chains in each watched netns still reachable by its PID."""
    removed: list[str] = []
    for pid, inode, backend in watched:
        try:
            if net_ns_inode(pid) != inode:
                continue  # the target is gone, and its netns with it (or going)
        except OSError:
            continue
        tables = iptables.NetnsIptables(pid, backend)
        try:
            removed += await tables.remove_chains(lambda c: c.owner == owner)
        except iptables.IptablesError as e:
            log.error("mirrord rules watchdog: %s", e)
    return removed


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    owner = Owner.parse(argv[1]) if len(argv) == 2 else None
    if owner is None:
        print("usage: python -m mirrord.agent.incoming.watchdog OWNER-TAG", file=sys.stderr)
        return 2
    os.chdir("/")  # hold no directory of the agent's
    watched = _read_watched()
    if watched is None:
        return 0
    removed = asyncio.run(sweep(owner, watched))
    if removed:
        log.warning(
            "mirrord: the agent %d died without removing its rules; removed %s",
            owner.pid,
            ", ".join(removed),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
