"""Which supervisor features a session runs with, built from the config and the agent.

One place where `mirrord exec` turns config sections into supervisor Features (rules +
handlers), so each feature adds one block here and run.py stays unchanged.
"""

from __future__ import annotations

from mirrord.client import AgentClient
from mirrord.config import MirrordConfig
from mirrord.net_config import outgoing_rules
from mirrord.supervisor import Feature


async def build_features(config: MirrordConfig, client: AgentClient) -> tuple[Feature, ...]:
    features: list[Feature] = []

    # Network: outgoing TCP/UDP and DNS queries leave from the target's netns.
    rules = outgoing_rules(config)
    if rules is not None:
        from mirrord.proxy import NetProxy
        from mirrord.supervisor.net import network_feature, resolve_filter_names

        proxy = NetProxy(client.channel, client.metadata())
        rules = await resolve_filter_names(rules, proxy.resolve)
        features.append(network_feature(rules, proxy))

    # Files: paths by upstream's fs rules; DNS files stay remote while DNS is.
    from mirrord.fs_config import fs_rules

    fs = fs_rules(config)
    if fs is not None:
        from mirrord.supervisor.fs import make_fs_feature
        from mirrord.supervisor.fs.remote import GrpcRemoteFs

        remote = GrpcRemoteFs(
            client.channel, client.metadata(), float(config.agent.communication_timeout_s)
        )
        features.append(make_fs_feature(fs, remote))

    return tuple(features)


async def close_features(features: tuple[Feature, ...]) -> None:
    """End-of-run work of each feature (before the agent session closes), newest first."""
    for feature in reversed(features):
        if feature.close is not None:
            await feature.close()
