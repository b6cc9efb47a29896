"""The agent as a real process: `python -m mirrord.agent` and start_local_agent (root)."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirrord.agent.server import ListenAddressError, parse_listen_address
from mirrord.client import AgentClient, AgentError, AgentStartFailed, start_local_agent
from tests.agent.agent_helpers import Target


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def agent_children() -> list[int]:
    """Our child processes that are agents (none may be left behind)."""
    found = []
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError):
            continue
        if ppid == me and b"mirrord.agent" in cmdline:
            found.append(int(entry))
    return found


async def test_local_agent_session_and_stop(target: Target) -> None:
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        assert agent.address.startswith("127.0.0.1:")
        with open(f"/proc/{agent.pid}/cmdline", "rb") as f:
            assert agent.token.encode() not in f.read()  # never in argv
        client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        assert client.hello.hostname == "pod-x"
        assert await client.get_env() == target.env
        await client.close()
    finally:
        status = await agent.stop()
        assert await agent.stop() == status  # idempotent
    assert gone(agent.pid)
    assert agent.log_path is None  # an unnamed file: nothing to remove, nothing left behind
    assert agent_children() == []


async def test_a_one_session_agent_refuses_a_second_session(target: Target) -> None:
    """#12: a token holder could open a second session on mirrord's own agent; its end
    stopped the agent and killed the real session."""
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        with pytest.raises(AgentError, match="single session"):
            await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        await asyncio.sleep(0.5)
        assert not client.lost.done()
        assert await client.get_env() == target.env  # the real session goes on
        await client.close()
        assert await asyncio.wait_for(agent.process.wait(), 10) == 0  # its end ends the agent
    finally:
        await agent.stop()


async def test_a_killed_mirrord_leaves_no_agent_log(tmp_path: Path) -> None:
    # The agent's log file has no name, so even SIGKILL of its parent leaves no file.
    script = (
        "import asyncio, os, signal\n"
        "from mirrord.client.local_agent import start_local_agent\n"
        "async def main():\n"
        "    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)\n"
        "    print(agent.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, env=env
    )
    out, _ = await proc.communicate()
    agent_pid = int(out.split()[0])
    for _ in range(100):  # --parent-death: the agent follows its parent
        if gone(agent_pid):
            break
        await asyncio.sleep(0.05)
    assert gone(agent_pid)
    assert list(tmp_path.iterdir()) == []


async def test_one_session_agent_exits_after_its_session(target: Target) -> None:
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        await client.close()
        assert await asyncio.wait_for(agent.process.wait(), 5.0) == 0
    finally:
        await agent.stop()
    assert gone(agent.pid)


async def test_agent_killed_mid_session_is_noticed(target: Target) -> None:
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        os.kill(agent.pid, signal.SIGKILL)
        started = time.monotonic()
        message = await asyncio.wait_for(client.lost, 2.0)
        assert time.monotonic() - started < 2.0
        assert agent.address in message
        assert "lost the connection to the agent" in message
        err = client.lost_error()
        assert err is not None and str(err) == message
        await client.close()  # still fine after a loss
    finally:
        await agent.stop()
    assert gone(agent.pid)


async def test_frozen_agent_is_noticed_by_pong_timeout(target: Target) -> None:
    # SIGSTOP keeps the TCP connection open but silent, as a dead network path would.
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(
            agent.address, agent.token, target.pid, timeout=5.0, ping_interval=0.1, pong_timeout=0.5
        )
        os.kill(agent.pid, signal.SIGSTOP)
        message = await asyncio.wait_for(client.lost, 3.0)
        assert "has not answered pings" in message
        await client.close()
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        await agent.stop()
    assert gone(agent.pid)


async def test_sigterm_ends_sessions_and_exits_cleanly(target: Target) -> None:
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    try:
        client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=5.0)
        agent.process.send_signal(signal.SIGTERM)
        message = await asyncio.wait_for(client.lost, 5.0)
        assert "SIGTERM" in message
        assert await asyncio.wait_for(agent.process.wait(), 5.0) == 0
        assert "session" in agent.stderr_tail() and "ending" in agent.stderr_tail()
        await client.close()
    finally:
        await agent.stop()


async def test_local_agent_startup_failure_shows_stderr(root: None) -> None:
    with pytest.raises(AgentStartFailed, match="not a loopback address"):
        await start_local_agent(
            ping_timeout=5.0, startup_timeout=10.0, extra_args=("--listen", "10.1.2.3:0")
        )
    assert agent_children() == []


def test_agent_refuses_non_loopback_listen() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mirrord.agent", "--listen", "0.0.0.0:0"],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": "x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--allow-non-loopback" in result.stderr
    assert result.stdout == ""


def test_agent_prints_listening_and_generates_token(root: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIRRORD_AGENT_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--listen", "[::1]:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("MIRRORD_AGENT_LISTENING [::1]:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "generated token" in proc.stderr.read() if proc.stderr else False
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:5000", ("::1", 5000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:port", "127.0.0.1:70000"])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ListenAddressError):
        parse_listen_address(text)


PARENT_SCRIPT = """
import asyncio, sys, time
from mirrord.client import start_local_agent

async def main():
    agent = await start_local_agent(ping_timeout=5.0, startup_timeout=10.0)
    print(agent.pid, flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def _dead_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_parent_death_kills_local_agent(root: None) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    agent_pid = 0
    try:
        assert parent.stdout is not None
        agent_pid = int(parent.stdout.readline())
        assert not _dead_or_zombie(agent_pid)
        parent.kill()  # no chance to clean up: only PR_SET_PDEATHSIG can stop the agent
        parent.wait()
        deadline = time.monotonic() + 5.0
        while not _dead_or_zombie(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dead_or_zombie(agent_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if agent_pid and not _dead_or_zombie(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)


async def test_an_early_agent_is_stopped_when_the_config_names_a_cluster(
    root: None, tmp_path: Path
) -> None:
    """`mirrord exec` (as root) starts the local agent while the config loads; a config
    that names a Kubernetes target needs none: the session stops it, in this process
    (whose end would otherwise stop it through --parent-death), before it fails."""
    from mirrord.client.local_agent import EarlyAgent
    from mirrord.config import ExecOverrides, resolve_config
    from mirrord.run import ExecError, run_exec

    early = EarlyAgent(30.0)
    await early.start()
    agent = await early.ready(10)  # up while the config would load
    config = resolve_config(None, ExecOverrides(target="pod/web"), {}).config
    environ = {"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    with pytest.raises(ExecError, match="no Kubernetes configuration"):
        await run_exec(["true"], config, environ=environ, early_agent=early)
    assert agent.process.returncode is not None  # stopped by the session
