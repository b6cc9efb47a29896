"""Running iptables inside a target's network namespace: backend choice, leftover cleanup,
installing and removing a session's rules.

Commands run as `nsenter --net=/proc/PID/ns/net iptables-… ` in a subprocess, so they never
block the event loop and the agent's own namespaces are untouched. Rule text comes from
rules.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from mirrord.agent.incoming.rules import (
    MirrordChain,
    Owner,
    count_rules,
    for_family,
    parse_nat_dump,
    remove_chains_script,
)

log = logging.getLogger(__name__)

LEGACY = "iptables-legacy"
NFT = "iptables-nft"
BACKENDS = (LEGACY, NFT)


class IptablesError(RuntimeError):
    """An iptables command failed (the message carries its stderr)."""


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, None if it does not exist; with the
    PID it names a process unambiguously (PIDs are recycled, start times are not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may contain spaces and parentheses; fields after the last ")" are fixed.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def this_agent() -> Owner:
    start = process_start_time(os.getpid())
    assert start is not None
    return Owner(os.getpid(), start)


def owner_alive(owner: Owner | None) -> bool:
    return owner is not None and process_start_time(owner.pid) == owner.start_time


def choose_backend(rule_counts: dict[str, int], preference: str | None) -> str:
    """Pick the backend the netns already uses; with none or both in use, the preference
    ("legacy"/"nft"), else the host's default `iptables`. Pure but for the default."""
    in_use = [b for b in BACKENDS if rule_counts.get(b, 0) > 0]
    available = [b for b in BACKENDS if b in rule_counts]
    if not available:
        raise IptablesError("neither iptables-legacy nor iptables-nft is installed on the agent")
    if len(in_use) == 1:
        return in_use[0]
    wanted = {"legacy": LEGACY, "nft": NFT}.get(preference or "") or default_backend()
    return wanted if wanted in available else available[0]


def default_backend() -> str:
    # Debian's `iptables` is an alternatives link to one of the two.
    target = os.path.realpath(shutil.which("iptables") or "")
    return LEGACY if "legacy" in os.path.basename(target) else NFT


def ip6(backend: str) -> str:
    """The IPv6 twin of a backend: iptables-nft → ip6tables-nft."""
    return backend.replace("iptables", "ip6tables", 1)


def has_global_ipv6(pid: int) -> bool:
    """Whether the netns of `pid` has an IPv6 address beyond loopback and link-local (an
    IPv6 or dual-stack pod): its traffic needs the same rules in ip6tables."""
    try:
        with open(f"/proc/{pid}/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return False  # no IPv6 in this kernel or netns
    return any(len(w) >= 4 and w[3] == "00" for w in (line.split() for line in lines))


@dataclass
class NetnsIptables:
    """iptables in one target's netns with one backend; with `v6`, every script goes to
    ip6tables too (the same chains; rules naming IPv4 sources stay IPv4's)."""

    pid: int
    backend: str
    v6: bool = False

    async def _run(self, argv: list[str], stdin: str | None = None) -> str:
        return await run_in_netns(self.pid, argv, stdin)

    def _families(self) -> list[tuple[str, bool]]:
        return [(self.backend, False)] + ([(ip6(self.backend), True)] if self.v6 else [])

    async def dump_nat(self) -> str:
        return await self.dump("nat")

    async def dump(self, table: str) -> str:
        return await self._run([f"{self.backend}-save", "-t", table])

    async def restore(self, script: str) -> None:
        for binary, v6 in self._families():
            try:
                await self._run(
                    [f"{binary}-restore", "-w", "5", "--noflush"], for_family(script, v6)
                )
            except (IptablesError, OSError) as e:
                if not v6:
                    raise
                # No ip6tables (binary, or nat support in the kernel): IPv4 still works,
                # IPv6 clients reach the pod itself. Said once; removal still covers IPv6.
                self.v6 = False
                log.warning("IPv6 traffic of target %d will not be redirected: %s", self.pid, e)

    async def chains(self) -> list[MirrordChain]:
        return parse_nat_dump(await self.dump_nat())

    async def remove_chains(self, match: Callable[[MirrordChain], bool]) -> list[str]:
        """Remove the mirrord chains `match` selects, IPv4's and IPv6's (these whenever
        ip6tables is there: leftovers of a dual-stack pod too); their names."""
        removed: list[str] = []
        for binary, v6 in [(self.backend, False), (ip6(self.backend), True)]:
            if v6 and shutil.which(f"{binary}-save") is None:
                continue
            try:
                found = [c for c in parse_nat_dump(await self._run([f"{binary}-save", "-t", "nat"]))
                         if match(c)]  # fmt: skip
            except IptablesError:
                if v6:
                    continue  # no IPv6 nat table here: nothing of ours in it
                raise
            if found:
                await self._run([f"{binary}-restore", "-w", "5", "--noflush"],
                                remove_chains_script(found))  # fmt: skip
                removed += [f"{c.name}{' (IPv6)' if v6 else ''}" for c in found]
        return removed


async def run_in_netns(pid: int, argv: list[str], stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net=/proc/{pid}/ns/net",
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise IptablesError(f"{' '.join(argv[:2])} in the netns of {pid} failed: {detail}")
    return out.decode(errors="replace")


async def available_rule_counts(pid: int) -> dict[str, int]:
    """Rules per installed backend in the target's netns (all tables)."""
    counts: dict[str, int] = {}
    for backend in BACKENDS:
        if shutil.which(f"{backend}-save") is None:
            continue
        try:
            counts[backend] = count_rules(await run_in_netns(pid, [f"{backend}-save"]))
        except IptablesError as e:
            log.debug("backend %s unusable: %s", backend, e)
    return counts


async def remove_leftovers(pid: int, backends: list[str]) -> list[str]:
    """Remove mirrord chains whose owning agent is dead (upstream's clean_iptables_on_start,
    made safe for several live agents on one target). Returns the removed chain names."""

    removed: list[str] = []
    for backend in backends:
        gone = await NetnsIptables(pid, backend).remove_chains(lambda c: not owner_alive(c.owner))
        if gone:
            log.warning(
                "removed leftover chains of a dead agent (%s): %s", backend, ", ".join(gone)
            )
            removed += gone
    return removed
