"""Which supervisor features a session runs with, built from the config and the agent.

One place where `mirrord exec` turns config sections into supervisor Features (rules +
handlers), so each feature adds one block here and run.py stays unchanged.
"""

from __future__ import annotations

import dataclasses
import os
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
    from mirrord.features.outgoing import IncomingHandlers, OutgoingRules
    from mirrord.features.outgoing.proxy import NetProxy


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
    incoming = _incoming(config, client, steal_probes)
    if rules is not None or incoming is not None:
        from mirrord.features.outgoing import OutgoingRules, network_feature, resolve_filter_names
        from mirrord.features.outgoing.proxy import NetProxy
        from mirrord.features.sockets.listeners import program_sends_from

        proxy = NetProxy(client.channel, client.metadata())
        proxy.udp_sender_ok = program_sends_from
        if _direct(client):
            await proxy.use_direct()
        if rules is None:  # incoming only: every connect stays local
            rules = OutgoingRules.build(tcp=False, udp=False, dns_enabled=False)
        rules = await resolve_filter_names(rules, proxy.resolve)
        if rules.dns_filter_mode is not None:
            proxy.dns_local = rules.dns_local  # dns.filter: per query name
        delivery = incoming[1] if incoming is not None else None
        if explain is not None:
            _explain_network(explain, rules, proxy, delivery)
        feature = network_feature(rules, proxy, incoming[0] if incoming else None, explain)

        async def close_network() -> None:
            # Incoming first (its subscriptions use the session), then the outgoing proxy:
            # relays reset, interceptors and the unix listeners' directory removed.
            try:
                if delivery is not None:
                    await delivery.close()
            finally:
                await proxy.close()

        feature.close = close_network
        features.append(feature)

    # Files: paths by upstream's fs rules; DNS files stay remote while DNS is.
    from mirrord.features.files.config import fs_rules

    fs = fs_rules(config)
    if fs is not None:
        from mirrord.features.files import make_fs_feature
        from mirrord.features.files.remote import GrpcRemoteFs

        remote: Any = GrpcRemoteFs(
            client.channel, client.metadata(), float(config.agent.communication_timeout_s)
        )
        if explain is not None:
            remote = _explain_files(explain, fs, remote)
        features.append(make_fs_feature(fs, remote))

    return tuple(features)


def _explain_network(
    explain: Explainer, rules: OutgoingRules, proxy: NetProxy, delivery: IncomingProxy | None
) -> None:
    explain.declare(rules.user_rules())

    def on_dns(name: str, local: bool, answers: list[str], rcode: str) -> None:
        explain.record(
            "dns",
            name=name,
            decision="local" if local else "remote",
            rule=rules.dns_rule_for(name),
            answers=answers,
            result=rcode,
        )

    proxy.on_dns = on_dns
    if delivery is not None:
        delivery.explain = explain


def _explain_files(explain: Explainer, fs: FsRules, remote: Any) -> Any:
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

    fs.on_decide = on_decide
    if explain.every:
        fs.on_every = fs.on_decide
    fs.on_map = lambda path, mapped, rule: explain.record(
        "file.mapping", path=path, mapped=mapped, rule=rule
    )
    return ExplainedRemoteFs(remote, explain)


def _incoming(
    config: MirrordConfig, client: AgentClient, steal_probes: bool
) -> tuple[IncomingHandlers, IncomingProxy] | None:
    """(IncomingHandlers, IncomingProxy), or None when incoming traffic is off or there is
    no target whose ports could be subscribed to (targetless)."""
    from mirrord.features.incoming.config import incoming_config

    found = incoming_config(config)
    if found is None or client.hello.target_pid == 0:
        return None
    from mirrord.features.incoming.client import IncomingClient
    from mirrord.features.incoming.delivery import IncomingProxy
    from mirrord.features.outgoing import IncomingHandlers

    policy, settings = found
    settings = dataclasses.replace(settings, probes=client.target_probes, steal_probes=steal_probes)
    delivery = IncomingProxy(IncomingClient(client), settings, direct=_direct(client))
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
