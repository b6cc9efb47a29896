"""Which supervisor features a session runs with, built from the config and the agent.

One place where `mirrord exec` turns config sections into supervisor Features (rules +
handlers), so each feature adds one block here and run.py stays unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mirrord.client import AgentClient
from mirrord.config import MirrordConfig
from mirrord.features.outgoing.config import outgoing_rules
from mirrord.supervisor import Feature
from mirrord.wire.loopback import shares_loopback

if TYPE_CHECKING:
    from mirrord.explain import Explainer
    from mirrord.features.files.rules import FsRules
    from mirrord.features.incoming.delivery import IncomingProxy
    from mirrord.features.outgoing.feature import IncomingHandlers, OutgoingRules


async def build_features(
    config: MirrordConfig,
    client: AgentClient,
    *,
    steal_probes: bool = False,
    explain: Explainer | None = None,
) -> tuple[Feature, ...]:
    """steal_probes: a steal takes the target's probes too (`--steal-probes`). explain:
    every feature records its decisions there (`--explain`)."""
    features: list[Feature] = []

    # Network: outgoing TCP/UDP and DNS queries leave from the target's netns; incoming
    # traffic of the target's ports reaches the program's listeners (one feature: both
    # need getpeername/getsockname).
    rules = outgoing_rules(config)
    incoming = _incoming(config, client, steal_probes, explain)
    if rules is not None or incoming is not None:
        from mirrord.features.outgoing.feature import (
            OutgoingRules,
            network_feature,
            resolve_filter_names,
        )
        from mirrord.features.outgoing.proxy import NetProxy
        from mirrord.features.sockets.listeners import program_sends_from

        if rules is None:  # incoming only: every connect stays local
            rules = OutgoingRules.build(tcp=False, udp=False, dns_enabled=False)
        proxy = NetProxy(
            client.channel,
            client.metadata(),
            udp_sender_ok=program_sends_from,
            # dns.filter: per query name (the names to resolve below are not involved)
            dns_local=rules.dns_local if rules.dns_filter_mode is not None else None,
            on_dns=_dns_recorder(explain, rules) if explain is not None else None,
        )
        if _direct(client):
            await proxy.use_direct()
        rules = await resolve_filter_names(rules, proxy.resolve)
        delivery = incoming[1] if incoming is not None else None
        if explain is not None:
            explain.declare(rules.user_rules())

        async def close_network() -> None:
            # Incoming first (its subscriptions use the session), then the outgoing proxy:
            # relays reset, interceptors and the unix listeners' directory removed.
            try:
                if delivery is not None:
                    await delivery.close()
            finally:
                await proxy.close()

        features.append(
            network_feature(
                rules,
                proxy,
                incoming[0] if incoming else None,
                explain=explain,
                close=close_network,
            )
        )

    # Files: paths by upstream's fs rules; DNS files stay remote while DNS is.
    from mirrord.features.files.config import fs_rules

    fs = fs_rules(config)
    if fs is not None:
        from mirrord.features.files.handlers import make_fs_feature
        from mirrord.features.files.remote import GrpcRemoteFs

        remote: Any = GrpcRemoteFs(
            client.channel, client.metadata(), float(config.agent.communication_timeout_s)
        )
        if explain is not None:
            fs, remote = _explain_files(explain, fs, remote)
        features.append(make_fs_feature(fs, remote))

    return tuple(features)


def _dns_recorder(
    explain: Explainer, rules: OutgoingRules
) -> Callable[[str, bool, list[str], str], None]:
    def on_dns(name: str, local: bool, answers: list[str], rcode: str) -> None:
        explain.record(
            "dns",
            name=name,
            decision="local" if local else "remote",
            rule=rules.dns_rule_for(name),
            answers=answers,
            result=rcode,
        )

    return on_dns


def _explain_files(explain: Explainer, fs: FsRules, remote: Any) -> tuple[FsRules, Any]:
    """The rules with --explain's hooks, and the remote files client that tells failures."""
    from mirrord.explain.hooks import ExplainedRemoteFs
    from mirrord.features.files.rules import Access

    names = {
        Access.LOCAL: "local",
        Access.READ_ONLY: "remote-read-only",
        Access.READ_WRITE: "remote-read-write",
        Access.NOT_FOUND: "not-found",
    }
    explain.declare(fs.user_rules())

    def on_decide(path: str, access: Access) -> None:
        # On the serving thread while the program waits: the rule is found later.
        explain.later(
            lambda: explain.record(
                "file", path=path, decision=names[access], rule=fs.rule_for(path)
            )
        )

    def on_map(path: str, mapped: str, rule: str) -> None:
        explain.record("file.mapping", path=path, mapped=mapped, rule=rule)

    explained = dataclasses.replace(
        fs, on_decide=on_decide, on_map=on_map, on_every=on_decide if explain.every else None
    )
    return explained, ExplainedRemoteFs(remote, explain)


def _incoming(
    config: MirrordConfig, client: AgentClient, steal_probes: bool, explain: Explainer | None
) -> tuple[IncomingHandlers, IncomingProxy] | None:
    """(IncomingHandlers, IncomingProxy), or None when incoming traffic is off or there is
    no target whose ports could be subscribed to (targetless)."""
    from mirrord.features.incoming.config import incoming_config

    found = incoming_config(config)
    if found is None or client.hello.target_pid == 0:
        return None
    from mirrord.features.incoming.client import IncomingClient
    from mirrord.features.incoming.delivery import IncomingProxy
    from mirrord.features.outgoing.feature import IncomingHandlers

    policy, settings = found
    settings = dataclasses.replace(settings, probes=client.target_probes, steal_probes=steal_probes)
    delivery = IncomingProxy(
        IncomingClient(client), settings, direct=_direct(client), explain=explain
    )
    return IncomingHandlers(policy, delivery), delivery


def _direct(client: AgentClient) -> bool:
    """The agent is on our own loopback (a local agent): connections go between the
    program and the agent directly, not over gRPC streams. MIRRORD_NO_DIRECT=1 keeps
    them on the streams (tests of that path, diagnosis)."""
    if os.environ.get("MIRRORD_NO_DIRECT") == "1":
        return False
    return shares_loopback(client.hello.loopback_id)


async def close_features(features: tuple[Feature, ...]) -> None:
    """End-of-run work of each feature (before the agent session closes), newest first."""
    for feature in reversed(features):
        if feature.close is not None:
            await feature.close()
