"""Fixtures: a target pod with a logging HTTP/1.1 server, a client pod, an in-process agent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient
from mirrord.testpod import Network, Pod
from tests.features.incoming.incoming_helpers import LOGGING_SERVER, TOKEN, mirrord_rules


@pytest.fixture
def target(network: Network) -> Pod:
    return network.add_pod(
        "target", argv=["/usr/bin/python3", "-c", LOGGING_SERVER, "8080"], wait_port=8080
    )


@pytest.fixture
def client_pod(network: Network) -> Pod:
    return network.add_pod("client", argv=["/bin/sleep", "600"])


@pytest.fixture
async def agent(target: Pod) -> AsyncIterator[AgentServer]:
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=2.0)
    await server.start()
    yield server
    await server.stop(grace=1.0)
    # Whatever the test did, the target's netns is clean once the agent stopped.
    assert mirrord_rules(target) == []


@pytest.fixture
async def session(agent: AgentServer, target: Pod) -> AsyncIterator[AgentClient]:
    client = await AgentClient.connect(
        agent.address, TOKEN, target.main_pid, timeout=10.0, agent_ping_timeout=2.0
    )
    yield client
    await client.close()
