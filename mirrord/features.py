"""Which supervisor features a session runs with, built from the config and the agent.

One place where `mirrord exec` turns config sections into supervisor Features (rules +
handlers), so each feature adds one block here and run.py stays unchanged.
"""

from __future__ import annotations

from mirrord.client import AgentClient
from mirrord.config import MirrordConfig
from mirrord.supervisor import Feature


async def build_features(config: MirrordConfig, client: AgentClient) -> tuple[Feature, ...]:
    features: list[Feature] = []
    return tuple(features)
