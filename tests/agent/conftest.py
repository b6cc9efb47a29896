"""Fixtures: target processes in their own net/UTS namespaces, and an in-process agent."""

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from mirrord.agent.server import AgentServer
from tests.agent.agent_helpers import TOKEN, Target, spawn_target


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, setns)")


@pytest.fixture
def target(root: None) -> Iterator[Target]:
    t = spawn_target("pod-x")
    yield t
    t.process.kill()
    t.process.wait()


@pytest.fixture
async def agent(root: None) -> AsyncIterator[AgentServer]:
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=5.0)
    await server.start()
    yield server
    await server.stop(grace=1.0)
