"""`mirrord exec` against a cluster: resolve the target, reach the agent on its node through a
port-forward, open the agent session. Used by `mirrord.run` in one place.

Everything up to the agent's HelloReply happens within `agent.startup_timeout`; the session's
ping timeout and API requests use `agent.communication_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import mirrord
from mirrord.client import AgentClient
from mirrord.client.errors import (
    AgentAuthFailed,
    AgentUnreachable,
    ProtocolMismatch,
    TargetNotFound,
)
from mirrord.config import MirrordConfig
from mirrord.kube import manifests as m
from mirrord.kube.api import DAEMONSETS, KubeApi, KubeSettings, wait_until
from mirrord.kube.errors import KubeError, KubeForbidden, KubeNotFound
from mirrord.kube.install import (
    NONE_YET,
    InstalledAgent,
    daemonset_warnings,
    ensure_agent,
    find_agent_pod,
    unscheduled,
)
from mirrord.kube.manifests import no_agent_pods
from mirrord.kube.progress import Progress
from mirrord.kube.targets import ResolvedTarget, resolve_target
from mirrord.kube.tunnel import PortForward
from mirrord.target import Target


def settings_from(config: MirrordConfig) -> KubeSettings:
    return KubeSettings(
        kubeconfig=config.kubeconfig,
        context=config.kube_context,
        request_timeout=float(config.agent.communication_timeout_s),
        insecure=bool(config.accept_invalid_certificates),
    )


REFUSAL_GRACE_S = 3.0


async def _wait_agent_pod(
    api: KubeApi, ns: str, node: str | None, deadline: float, progress: Progress
) -> str:
    where = f"on node {node}" if node else "on any node"
    progress.step(f"waiting for the mirrord agent {where}")
    loop = asyncio.get_running_loop()
    # The DaemonSet controller retries a refused pod every few seconds, each time with a
    # FailedCreate event: one from the last minute says why no pod is coming.
    # After a fix (the namespace labelled) the controller needs a moment to try again, so
    # the events are looked at only after a grace period without any pod.
    recent = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=60)
    next_look = loop.time() + REFUSAL_GRACE_S
    while True:
        pod, seen = await find_agent_pod(api, ns, node)
        if pod is not None:
            return pod
        if seen == NONE_YET and loop.time() >= next_look:
            next_look = loop.time() + 1.0
            warnings = await daemonset_warnings(api, ns, since=recent)
            if warnings:
                raise KubeError(f"no mirrord agent {where}: {no_agent_pods(ns, warnings)}")
            with contextlib.suppress(KubeForbidden, KubeNotFound):  # then only the timeout says
                no_node = unscheduled(await api.get(DAEMONSETS, m.AGENT_NAME, ns))
                if no_node is not None:
                    raise KubeError(f"no mirrord agent {where}: {no_node}")
        if loop.time() >= deadline:
            if seen == NONE_YET:
                raise KubeError(f"no mirrord agent {where}: {no_agent_pods(ns)}")
            raise KubeError(
                f"no ready mirrord agent {where} in namespace {ns} (agent pods: {seen}); "
                "check `mirrord agent status` (image pull errors show there)"
            )
        progress.step(f"waiting for the mirrord agent {where} ({seen})")
        await wait_until(deadline, 0.25)


@asynccontextmanager
async def kube_agent_session(
    config: MirrordConfig,
    target: Target,
    environ: Mapping[str, str],
    *,
    progress: Progress | None = None,
) -> AsyncIterator[AgentClient]:
    """A connected AgentClient for a Kubernetes target (or cluster targetless)."""
    progress = progress or Progress()
    startup = float(config.agent.startup_timeout_s)
    ping_timeout = float(config.agent.communication_timeout_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup
    api = await KubeApi.connect(settings_from(config), environ)
    forward: PortForward | None = None
    try:
        with progress:
            try:
                async with asyncio.timeout(startup):
                    resolved, agent, pod = await _prepare(api, config, target, deadline, progress)
            except TimeoutError:
                raise KubeError(
                    f"gave up after agent.startup_timeout ({startup:g}s) while {progress.last_step}"
                ) from None
            forward = PortForward(api, agent.namespace, pod, m.AGENT_PORT)
            address = await forward.start()
            progress.step(f"opening the agent session through a port-forward to {pod}")
            client = await _connect(forward, address, agent, resolved, deadline, ping_timeout)
        try:
            yield client
        finally:
            await client.close()
    finally:
        if forward is not None:
            await forward.close()
        await api.close()


async def _prepare(
    api: KubeApi, config: MirrordConfig, target: Target, deadline: float, progress: Progress
) -> tuple[ResolvedTarget | None, InstalledAgent, str]:
    resolved = None
    if target.kind is not None:
        ns = config.target.namespace or api.namespace
        progress.step(f"resolving {target} in namespace {ns}")
        resolved = await resolve_target(api, target, ns)
        progress.say(
            f"target {resolved.description}, container {resolved.container} on node {resolved.node}"
        )
    progress.step("looking for the mirrord agent")
    agent = await ensure_agent(api, config.agent, progress.say, progress.step)
    pod = await _wait_agent_pod(
        api, agent.namespace, resolved.node if resolved else None, deadline, progress
    )
    return resolved, agent, pod


async def _connect(
    forward: PortForward,
    address: str,
    agent: InstalledAgent,
    resolved: ResolvedTarget | None,
    deadline: float,
    ping_timeout: float,
) -> AgentClient:
    remaining = max(1.0, deadline - asyncio.get_running_loop().time())
    connecting = asyncio.ensure_future(
        AgentClient.connect(
            address,
            agent.token,
            None,
            container_id=resolved.container_id if resolved else None,
            timeout=remaining,
            agent_ping_timeout=ping_timeout,
            target_probes=resolved.probes if resolved else (),
        )
    )
    refused = asyncio.ensure_future(forward.refused.wait())
    try:
        await asyncio.wait((connecting, refused), return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # the API server said no for good: no retry will do
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            raise KubeError(forward.last_error() or "the API server refused the port-forward")
        return connecting.result()
    except ProtocolMismatch as exc:
        # The DaemonSet's annotation did not reveal it (edited by hand, or mid-rollout).
        raise KubeError(
            f"version skew: {exc}. The agent installed in namespace {agent.namespace} is "
            f"mirrord {agent.version}, this CLI is mirrord {mirrord.__version__}; update the "
            "agent with `mirrord agent install`, or use the matching mirrord"
        ) from None
    except AgentAuthFailed:
        # In a cluster the token is the Secret's; kube users never set it themselves.
        raise KubeError(
            f"the agent refused the token of the Secret {agent.namespace}/{m.TOKEN_SECRET}: "
            "the agent pods run with another one (the Secret was re-created, e.g. by "
            "applying `mirrord agent install --dry-run` output again). Restart them to take "
            f"the current one: `kubectl -n {agent.namespace} rollout restart daemonset "
            f"{m.AGENT_NAME}`"
        ) from None
    except TargetNotFound as exc:
        assert resolved is not None
        raise KubeError(
            f"the agent on node {resolved.node} found no process of container "
            f"{resolved.container} of pod {resolved.pod} ({resolved.container_id}): {exc}"
        ) from None
    except AgentUnreachable as exc:
        why = forward.last_error()
        raise KubeError(f"{exc}" + (f" ({why})" if why else "")) from None
    finally:
        refused.cancel()
        if not connecting.done():
            connecting.cancel()
