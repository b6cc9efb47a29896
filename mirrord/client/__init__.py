"""Client side of the agent connection (used by `mirrord exec`)."""

from mirrord.client.agent_client import AgentClient
from mirrord.client.errors import (
    AgentAuthFailed,
    AgentError,
    AgentLost,
    AgentStartFailed,
    AgentUnreachable,
    ProtocolMismatch,
    TargetNotFound,
)
from mirrord.client.local_agent import LocalAgent, start_local_agent

__all__ = [
    "AgentAuthFailed",
    "AgentClient",
    "AgentError",
    "AgentLost",
    "AgentStartFailed",
    "AgentUnreachable",
    "LocalAgent",
    "ProtocolMismatch",
    "TargetNotFound",
    "start_local_agent",
]
