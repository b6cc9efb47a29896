"""However a session ends, the target's netns is left without mirrord rules."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mirrord.agent.incoming import iptables
from mirrord.agent.incoming.rules import (
    Owner,
    SessionChains,
    create_chains_script,
    remove_chains_script,
)
from mirrord.agent.incoming.watchdog import sweep
from mirrord.agent.namespaces import net_ns_inode
from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient, start_local_agent
from mirrord.features.incoming.client import IncomingClient
from mirrord.testpod import Pod
from tests.features.incoming.incoming_helpers import TOKEN, mirrord_rules, wait_until

pytestmark = pytest.mark.root

SUBSCRIBER = Path(__file__).with_name("subscriber.py")
ROOT = Path(__file__).resolve().parents[3]


def spawn_subscriber(address: str, pid: int, port: int, token: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(SUBSCRIBER), address, str(pid), str(port), "steal"],
        stdout=subprocess.PIPE,
        env=dict(os.environ, MIRRORD_AGENT_TOKEN=token, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"SUBSCRIBED":
        proc.kill()
        proc.wait()
        pytest.fail(f"subscriber did not subscribe: {line!r}")
    return proc


async def test_normal_end_removes_rules(session: AgentClient, target: Pod) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    assert mirrord_rules(target) != []
    await sub.close()
    await session.close()  # returns once the agent ran the session's cleanups
    assert mirrord_rules(target) == []


async def test_sigkill_of_the_client_removes_rules(agent: AgentServer, target: Pod) -> None:
    proc = await asyncio.to_thread(spawn_subscriber, agent.address, target.main_pid, 8080, TOKEN)
    try:
        assert any("mirrord:steal:8080" in r for r in mirrord_rules(target))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The agent notices the dropped stream (or, at worst, the 2 s ping timeout).
        await asyncio.to_thread(wait_until, lambda: mirrord_rules(target) == [])
        assert mirrord_rules(target) == []
    finally:
        proc.kill()
        proc.wait()


async def test_agent_sigterm_removes_rules(target: Pod) -> None:
    local = await start_local_agent(ping_timeout=2.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(local.address, local.token, target.main_pid, timeout=10)
        await IncomingClient(client).subscribe(8080, "steal")
        assert mirrord_rules(target) != []
        await local.stop()  # SIGTERM: the agent ends its sessions, running their cleanups
        assert mirrord_rules(target) == []
        await client.close()
    finally:
        await local.stop()


def _watchdog_of(agent: int) -> int:
    for task in os.listdir(f"/proc/{agent}/task"):
        for child in Path(f"/proc/{agent}/task/{task}/children").read_text().split():
            if b"watchdog" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise AssertionError(f"agent {agent} has no rules watchdog")


async def test_agent_sigkill_removes_its_rules(target: Pod) -> None:
    local = await start_local_agent(ping_timeout=2.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(local.address, local.token, target.main_pid, timeout=10)
        await IncomingClient(client).subscribe(8080, "steal")
        assert mirrord_rules(target) != []
        local.process.send_signal(signal.SIGKILL)
        await local.process.wait()
        # The agent's watchdog removes them (a new agent would only on its first subscribe).
        await asyncio.to_thread(wait_until, lambda: mirrord_rules(target) == [], 5)
        assert mirrord_rules(target) == []
        await client.close()
    finally:
        await local.stop()


async def test_agent_and_watchdog_sigkill_then_a_new_agent_removes_leftovers(
    target: Pod,
) -> None:
    local = await start_local_agent(ping_timeout=2.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(local.address, local.token, target.main_pid, timeout=10)
        await IncomingClient(client).subscribe(8080, "steal")
        os.kill(_watchdog_of(local.process.pid), signal.SIGKILL)  # as a container's end does
        local.process.send_signal(signal.SIGKILL)
        await local.process.wait()
        leftovers = mirrord_rules(target)
        assert any("mirrord:steal:8080" in r for r in leftovers)  # nothing ran at SIGKILL
        await client.close()
    finally:
        await local.stop()
    # A new agent that acts on the target removes the dead agent's chains first, and can
    # take the port that the dead agent's rules still claimed.
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=2.0)
    await server.start()
    try:
        client = await AgentClient.connect(server.address, TOKEN, target.main_pid, timeout=10)
        sub = await IncomingClient(client).subscribe(8080, "steal")
        rules = mirrord_rules(target)
        assert not any(r for r in rules if any(c in r for c in _chains(leftovers)))
        await sub.close()
        await client.close()
    finally:
        await server.stop(grace=1.0)
    assert mirrord_rules(target) == []


def _chains(lines: list[str]) -> set[str]:
    return {w.lstrip(":") for line in lines for w in line.split() if "MIRRORD_" in w}


async def test_the_watchdog_removes_only_its_agents_chains(target: Pod) -> None:
    """Another live agent's chains in the same netns stay; a netns whose PID now names
    another namespace is not touched."""
    backend = iptables.default_backend()
    tables = iptables.NetnsIptables(target.main_pid, backend)
    dead, live = Owner(999_999, 1), iptables.this_agent()
    mine, other = SessionChains.for_session("dead" * 4), SessionChains.for_session("live" * 4)
    await tables.restore(create_chains_script(mine, dead))
    await tables.restore(create_chains_script(other, live))
    try:
        inode = net_ns_inode(target.main_pid)
        assert await sweep(dead, [(target.main_pid, inode + 1, backend)]) == []  # not this netns
        removed = await sweep(dead, [(target.main_pid, inode, backend)])
        assert sorted(removed) == sorted([mine.inbound, mine.outbound])
        assert {c.name for c in await tables.chains()} == {other.inbound, other.outbound}
    finally:
        await tables.restore(remove_chains_script(await tables.chains()))
