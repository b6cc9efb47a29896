"""Client side of the agent connection (used by `mirrord exec`).

Names are imported on first use: `mirrord exec` spawns its local agent through
`local_agent` before anything else, and the gRPC client behind `AgentClient` costs
~90 ms of imports it then does while the agent starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirrord.client.agent_client import AgentClient as AgentClient
    from mirrord.client.errors import AgentAuthFailed as AgentAuthFailed
    from mirrord.client.errors import AgentError as AgentError
    from mirrord.client.errors import AgentLost as AgentLost
    from mirrord.client.errors import AgentStartFailed as AgentStartFailed
    from mirrord.client.errors import AgentUnreachable as AgentUnreachable
    from mirrord.client.errors import ProtocolMismatch as ProtocolMismatch
    from mirrord.client.errors import TargetNotFound as TargetNotFound
    from mirrord.client.local_agent import LocalAgent as LocalAgent
    from mirrord.client.local_agent import start_local_agent as start_local_agent

_WHERE = {
    "AgentClient": "agent_client",
    "AgentAuthFailed": "errors",
    "AgentError": "errors",
    "AgentLost": "errors",
    "AgentStartFailed": "errors",
    "AgentUnreachable": "errors",
    "ProtocolMismatch": "errors",
    "TargetNotFound": "errors",
    "LocalAgent": "local_agent",
    "start_local_agent": "local_agent",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mirrord.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mirrord.client.{module}"), name)
