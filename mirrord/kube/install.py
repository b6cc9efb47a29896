"""`mirrord agent install|uninstall|status`, and the agent lookup `mirrord exec` does.

Install is idempotent: existing objects are replaced, except the namespace (left as is) and
the token Secret (kept, so agents already running keep accepting their clients).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mirrord
from mirrord.config.models import AgentConfig
from mirrord.kube import api as k
from mirrord.kube import manifests as m
from mirrord.kube.api import KubeApi
from mirrord.kube.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNamespaceTerminating,
    KubeNotFound,
)
from mirrord.kube.targets import is_ready, pod_state
from mirrord.wire.protocol import OURS as PROTOCOL
from mirrord.wire.protocol import PROTOCOL_MAJOR

REPLACE_ATTEMPTS = 5


async def _apply(api: KubeApi, obj: dict[str, Any]) -> str:
    res = k.BY_KIND[obj["kind"]]
    name = obj["metadata"]["name"]
    ns = obj["metadata"].get("namespace")
    label = f"{obj['kind']} {ns + '/' if ns else ''}{name}"
    try:
        await api.create(res, obj)
        return f"created {label}"
    except KubeConflict:
        pass
    if obj["kind"] in ("Namespace", "Secret"):
        return f"kept {label}"
    # A replace names the resourceVersion it read; the DaemonSet controller bumps it with
    # every status update, so a conflict means "read again", not "someone else's change".
    for _ in range(REPLACE_ATTEMPTS - 1):
        with contextlib.suppress(KubeConflict):
            await _replace_current(api, res, obj)
            return f"updated {label}"
    await _replace_current(api, res, obj)  # a conflict that persists is said
    return f"updated {label}"


async def _replace_current(api: KubeApi, res: k.Resource, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    current = await api.get(res, meta["name"], meta.get("namespace"))
    version = current["metadata"].get("resourceVersion")
    await api.replace(res, {**obj, "metadata": {**meta, "resourceVersion": version}})


async def read_token(api: KubeApi, ns: str) -> str | None:
    try:
        secret = await api.get(k.SECRETS, m.TOKEN_SECRET, ns)
    except KubeNotFound:
        return None
    raw = (secret.get("data") or {}).get(m.TOKEN_KEY)
    return base64.b64decode(raw).decode() if raw else None


# How long `agent install` waits for a Terminating agent namespace to go (exec: its own
# start-up timeout bounds it). Emptying a namespace takes seconds; longer, a finalizer holds it.
TERMINATING_WAIT_S = 120.0


async def install(
    api: KubeApi,
    agent: AgentConfig,
    users_group: str = m.USERS_GROUP,
    say: Callable[[str], None] | None = None,
    terminating_wait_s: float = TERMINATING_WAIT_S,
    step: Callable[[str], None] | None = None,
) -> list[str]:
    """Install (or update) the agent. A namespace still Terminating from an uninstall is
    waited for (it refuses new content until it is gone), then made again."""
    ns = m.agent_namespace(agent)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + terminating_wait_s
    while True:
        await _until_not_terminating(api, ns, deadline, say, step)
        try:
            return await _install_once(api, agent, users_group)
        except KubeNamespaceTerminating:
            continue  # deleted under us (another user's uninstall): wait for it again


async def _install_once(api: KubeApi, agent: AgentConfig, users_group: str) -> list[str]:
    ns = m.agent_namespace(agent)
    try:
        await api.create(k.NAMESPACES, m.namespace_manifest(ns))
        done = [f"created Namespace {ns}"]
    except KubeConflict:
        done = [await _pod_security(api, ns)]
    token = await read_token(api, ns) or m.new_token()
    for obj in m.install_manifests(agent, token, users_group)[1:]:
        done.append(await _apply(api, obj))
    return done


async def _until_not_terminating(
    api: KubeApi,
    ns: str,
    deadline: float,
    say: Callable[[str], None] | None,
    step: Callable[[str], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    waited = False
    while True:
        try:
            current = await api.get(k.NAMESPACES, ns)
        except (KubeNotFound, KubeForbidden):  # gone, or not ours to read: create will say
            return
        if (current.get("status") or {}).get("phase") != "Terminating":
            return
        if not waited:
            waited = True
            if say is not None:
                say(
                    f"namespace {ns} is being deleted (Terminating, e.g. after `mirrord agent "
                    "uninstall`); waiting for it to go before installing the agent again"
                )
            if step is not None:
                step(f"waiting for namespace {ns} to finish terminating "
                     f"(`kubectl get ns {ns} -o yaml`)")  # fmt: skip
        if loop.time() >= deadline:
            raise KubeError(
                f"namespace {ns} is still Terminating: something holds it (a finalizer, or "
                f"content that cannot be deleted); `kubectl get ns {ns} -o yaml` shows its "
                "conditions. Install the agent once it is gone, or into another namespace "
                "(agent.namespace)"
            )
        await k.wait_until(deadline, 0.5)


async def _pod_security(api: KubeApi, ns: str) -> str:
    """An existing agent namespace gets the Pod Security labels the agent needs."""
    current = await api.get(k.NAMESPACES, ns)
    labels = current["metadata"].get("labels") or {}
    if all(labels.get(key) == value for key, value in m.POD_SECURITY.items()):
        return f"kept Namespace {ns}"
    meta = {**current["metadata"], "labels": {**labels, **m.POD_SECURITY}}
    try:
        await api.replace(k.NAMESPACES, {**current, "metadata": meta})
    except KubeForbidden:
        return (
            f"kept Namespace {ns}, but could not label it for Pod Security (forbidden): if "
            f"no agent pod starts, run `kubectl label ns {ns} "
            "pod-security.kubernetes.io/enforce=privileged --overwrite`"
        )
    return f"labelled Namespace {ns} for Pod Security (privileged)"


async def uninstall(api: KubeApi, agent: AgentConfig) -> list[str]:
    ns = m.agent_namespace(agent)
    done = []
    # Cluster-scoped objects first: deleting the namespace removes everything in it.
    for res in (k.CLUSTER_ROLE_BINDINGS, k.CLUSTER_ROLES):
        if await api.delete(res, m.USER_ROLE):
            done.append(f"deleted {res.kind} {m.USER_ROLE}")
    if await api.delete(k.DAEMONSETS, m.AGENT_NAME, ns):
        done.append(f"deleted DaemonSet {ns}/{m.AGENT_NAME}")
    if await api.delete(k.NAMESPACES, ns):
        done.append(
            f"deleted Namespace {ns} (and everything in it; it is Terminating until its "
            "contents are gone, and an install meanwhile waits for that)"
        )
    return done


@dataclass(frozen=True)
class AgentStatus:
    namespace: str
    installed: bool
    version: str | None = None
    protocol: str | None = None
    image: str | None = None
    pods: tuple[dict[str, str], ...] = ()
    warnings: tuple[str, ...] = ()  # the DaemonSet controller's, when it has no pod
    unscheduled: str | None = None  # why no node may run an agent pod (unscheduled())

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "installed": self.installed,
            "version": self.version,
            "protocol": self.protocol,
            "image": self.image,
            "cli_version": mirrord.__version__,
            "cli_protocol": PROTOCOL,
            "pods": list(self.pods),
            "warnings": list(self.warnings),
            "unscheduled": self.unscheduled,
        }


def _agent_pod_info(pod: dict[str, Any]) -> dict[str, str]:
    return {
        "name": pod["metadata"]["name"],
        "node": (pod.get("spec") or {}).get("nodeName") or "",
        "state": "Ready" if is_ready(pod) else pod_state(pod),
    }


async def status(api: KubeApi, agent: AgentConfig) -> AgentStatus:
    ns = m.agent_namespace(agent)
    try:
        ds = await api.get(k.DAEMONSETS, m.AGENT_NAME, ns)
    except KubeNotFound:
        return AgentStatus(ns, False)
    pods = await api.list(k.PODS, ns, label_selector=_selector())
    meta = ds["metadata"]
    containers = ds["spec"]["template"]["spec"].get("containers") or [{}]
    warnings = () if pods else await daemonset_warnings(api, ns)
    return AgentStatus(
        ns,
        True,
        version=(meta.get("labels") or {}).get(m.VERSION_LABEL),
        protocol=(meta.get("annotations") or {}).get(m.PROTOCOL_ANNOTATION),
        image=containers[0].get("image"),
        pods=tuple(_agent_pod_info(p) for p in sorted(pods, key=lambda p: p["metadata"]["name"])),
        warnings=warnings,
        unscheduled=None if pods else unscheduled(ds),
    )


def unscheduled(ds: dict[str, Any]) -> str | None:
    """Why the DaemonSet runs no pod anywhere: its controller, having seen its current spec,
    found no node its nodeSelector and tolerations allow (desiredNumberScheduled 0)."""
    status = ds.get("status") or {}
    meta = ds.get("metadata") or {}
    if status.get("desiredNumberScheduled", -1) != 0:
        return None
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 1)):
        return None  # not looked at yet
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    selector = ", ".join(f"{k}={v}" for k, v in (spec.get("nodeSelector") or {}).items())
    return (
        f"the DaemonSet {meta.get('namespace')}/{meta.get('name')} may run on no node: none "
        f"matches its node selector ({selector or 'none'}; agent.node_selector) and "
        "tolerations (agent.tolerations). `kubectl get nodes --show-labels` shows the "
        "nodes' labels; fix agent.node_selector, then `mirrord agent install`"
    )


def _event_time(event: dict[str, Any]) -> datetime.datetime | None:
    """When an event last happened (core/v1 events fill one of these, newest first)."""
    created = (event.get("metadata") or {}).get("creationTimestamp")
    for value in (event.get("lastTimestamp"), event.get("eventTime"), created):
        if value:
            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None


async def daemonset_warnings(
    api: KubeApi, ns: str, since: datetime.datetime | None = None
) -> tuple[str, ...]:
    """The agent DaemonSet's Warning events ("Reason: message"), newest first, without
    repeats; only those since `since` if given. Empty if we may not list events."""
    field = f"involvedObject.kind=DaemonSet,involvedObject.name={m.AGENT_NAME}"
    try:
        events = await api.list(k.EVENTS, ns, field_selector=field)
    except (KubeForbidden, KubeNotFound):
        return ()
    dated = []
    for event in events:
        when = _event_time(event)
        if event.get("type") != "Warning" or (since and (when is None or when < since)):
            continue
        dated.append((when or datetime.datetime.min.replace(tzinfo=datetime.UTC), event))
    said: list[str] = []
    for _, event in sorted(dated, key=lambda d: d[0], reverse=True):
        text = f"{event.get('reason') or 'Warning'}: {event.get('message') or ''}".strip()
        if text not in said:
            said.append(text)
    return tuple(said)


def _selector() -> str:
    return ",".join(f"{k}={v}" for k, v in m.SELECTOR.items())


def skew_message(version: str | None, protocol: str | None, ns: str) -> str | None:
    """An error if the installed agent cannot talk to this CLI; None if it can."""
    major = (protocol or "").split(".")[0]
    if not major.isdigit() or int(major) == PROTOCOL_MAJOR:
        return None
    return (
        f"version skew: the agent installed in namespace {ns} is mirrord {version} (protocol "
        f"{protocol}), this CLI is mirrord {mirrord.__version__} (protocol {PROTOCOL}), and "
        f"the two cannot talk. Update the agent with `mirrord agent install` (a cluster "
        f"admin may have to), or use mirrord {version}"
    )


@dataclass(frozen=True)
class InstalledAgent:
    namespace: str
    token: str
    version: str | None
    protocol: str | None


async def ensure_agent(
    api: KubeApi, agent: AgentConfig, say: Any, step: Callable[[str], None] | None = None
) -> InstalledAgent:
    """The installed agent and its token; installs it first when missing and RBAC allows."""
    ns = m.agent_namespace(agent)
    try:
        ds = await api.get(k.DAEMONSETS, m.AGENT_NAME, ns)
    except KubeNotFound:
        say(f"the mirrord agent is not installed in namespace {ns}; installing it")
        try:
            await install(api, agent, say=say, step=step)
        except KubeForbidden as exc:
            raise KubeError(
                f"the mirrord agent is not installed in namespace {ns}, and you may not "
                f"install it (you may not {exc.verb} {exc.resource}). A cluster admin must "
                "run `mirrord agent install` once (see docs/kubernetes.md)"
            ) from None
        ds = await api.get(k.DAEMONSETS, m.AGENT_NAME, ns)
    meta = ds["metadata"]
    version = (meta.get("labels") or {}).get(m.VERSION_LABEL)
    protocol = (meta.get("annotations") or {}).get(m.PROTOCOL_ANNOTATION)
    problem = skew_message(version, protocol, ns)
    if problem:
        raise KubeError(problem)
    if version != mirrord.__version__:
        say(
            f"note: the agent in namespace {ns} is mirrord {version}, this CLI is "
            f"{mirrord.__version__} (same protocol {protocol}: they work together)"
        )
    try:
        token = await read_token(api, ns)
    except KubeForbidden as exc:
        raise KubeError(
            f"{exc}. mirrord reads the agent's token from the Secret {ns}/{m.TOKEN_SECRET}; "
            f"`mirrord agent install` grants that to the group {m.USERS_GROUP}"
        ) from None
    if not token:
        raise KubeError(
            f"the agent's token Secret {ns}/{m.TOKEN_SECRET} is missing or empty; run "
            "`mirrord agent install` again to recreate it"
        )
    return InstalledAgent(ns, token, version, protocol)


NONE_YET = "none yet"
# Waiting reasons that will not pass by themselves: the image cannot be had.
IMAGE_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


async def find_agent_pod(api: KubeApi, ns: str, node: str | None) -> tuple[str | None, str]:
    """(name of a ready agent pod on `node` (any node if None), or None; a description of
    the agent pods seen, for a timeout message). KubeError at once when an agent pod
    cannot get its image (waiting for it would only take the whole timeout)."""
    field = f"spec.nodeName={node}" if node else None
    pods = await api.list(k.PODS, ns, label_selector=_selector(), field_selector=field)
    ready = sorted(p["metadata"]["name"] for p in pods if is_ready(p))
    if ready:
        return ready[0], ""
    for pod in pods:
        problem = _image_problem(pod)
        if problem is not None:
            raise KubeError(problem)
    seen = "; ".join(f"{p['metadata']['name']}: {pod_state(p)}" for p in pods) or NONE_YET
    return None, seen


def _image_problem(pod: dict[str, Any]) -> str | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_ERRORS:
            containers = (pod.get("spec") or {}).get("containers") or [{}]
            image = cs.get("image") or containers[0].get("image") or "?"
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return (
                f"the mirrord agent's image {image} cannot be pulled on node "
                f"{(pod.get('spec') or {}).get('nodeName', '?')} ({reason}{detail}). Set "
                "agent.image in mirrord.json (or --agent-image) to an image your nodes can "
                "pull, then run `mirrord agent install`; docs/kubernetes.md says how to "
                "build it and load it into kind or minikube, or push it to a registry"
            )
    return None
