"""Kubernetes targets → one running pod, one container, its container ID and node.

A workload resolves through its label selector to its ready pods; the first by name is used
(the choice is reported). The container ID comes from the pod's status
(`containerd://…`, `cri-o://…`, `docker://…`); the agent maps it to a PID on the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirrord.client.probes import ProbeSpec
from mirrord.kube import api as k
from mirrord.kube.api import KubeApi, Resource
from mirrord.kube.errors import KubeError, KubeNotFound
from mirrord.kube.probes import probes_of
from mirrord.target import Target

# Containers injected beside the app (service meshes, Vault, Knative, Telepresence): never
# the one a user means (upstream's list). `exec` skips them, `ls` does not offer them.
MESH_SIDECARS = frozenset(
    {
        "istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init", "kuma-sidecar",
        "kuma-init", "vault-agent", "vault-agent-init", "queue-proxy", "traffic-agent",
    }
)  # fmt: skip

WORKLOADS: dict[str, Resource] = {
    "deployment": k.DEPLOYMENTS,
    "statefulset": k.STATEFULSETS,
    "replicaset": k.REPLICASETS,
    "job": k.JOBS,
    "rollout": k.ROLLOUTS,
}


@dataclass(frozen=True)
class ResolvedTarget:
    namespace: str
    pod: str
    node: str
    container: str
    container_id: str
    description: str  # for the user: which pod was picked and why
    probes: tuple[ProbeSpec, ...] = ()  # the container's kubelet probes (kube/probes.py)


def selector_string(selector: dict[str, Any] | None) -> str:
    """A LabelSelector object as the `labelSelector` query syntax."""
    parts: list[str] = []
    for key, value in sorted(((selector or {}).get("matchLabels") or {}).items()):
        parts.append(f"{key}={value}")
    for expr in (selector or {}).get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def pod_state(pod: dict[str, Any]) -> str:
    """`Running`, `Pending: ContainerCreating`, `Running, not ready: CrashLoopBackOff`..."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    reasons = sorted(
        {
            str(state.get("reason") or name)
            for cs in status.get("containerStatuses") or []
            for name, state in (cs.get("state") or {}).items()
            if name in ("waiting", "terminated") and isinstance(state, dict)
        }
    )
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    if phase == "Running" and not is_ready(pod):
        return "Running, not ready" + (f": {', '.join(reasons)}" if reasons else "")
    return phase + (f": {', '.join(reasons)}" if reasons else "")


def choose_container(pod: dict[str, Any], wanted: str | None) -> tuple[str, str]:
    """(container name, container ID) of the container to target in a running pod."""
    name = pod["metadata"]["name"]
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if wanted is not None:
        if wanted not in containers:
            raise KubeError(
                f"pod {name} has no container {wanted!r} (its containers: "
                f"{', '.join(containers) or 'none'})"
            )
        chosen = wanted
    else:
        candidates = [c for c in containers if c not in MESH_SIDECARS] or containers
        if len(candidates) != 1:
            raise KubeError(
                f"pod {name} has several containers ({', '.join(containers)}); name one, "
                f"e.g. --target pod/{name}/container/{candidates[0]}"
                if candidates
                else f"pod {name} has no containers"
            )
        chosen = candidates[0]
    statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("containerStatuses") or []}
    status = statuses.get(chosen) or {}
    state = status.get("state") or {}
    cid = status.get("containerID") or ""
    if "running" not in state or not cid:
        detail = next(
            (f"{k}: {v.get('reason') or ''}".strip(": ") for k, v in state.items()), "no status"
        )
        raise KubeError(f"container {chosen} of pod {name} is not running ({detail})")
    return chosen, str(cid)


def _resolved(
    pod: dict[str, Any], namespace: str, container: str | None, description: str
) -> ResolvedTarget:
    cname, cid = choose_container(pod, container)
    node = (pod.get("spec") or {}).get("nodeName") or ""
    if not node:
        raise KubeError(f"pod {pod['metadata']['name']} is not scheduled on a node yet")
    return ResolvedTarget(
        namespace, pod["metadata"]["name"], node, cname, cid, description, probes_of(pod, cname)
    )


async def _get_or_explain(api: KubeApi, res: Resource, name: str, ns: str) -> dict[str, Any]:
    try:
        return await api.get(res, name, ns)
    except KubeNotFound:
        kind = res.kind.lower()
        hint = " (is Argo Rollouts installed?)" if res is k.ROLLOUTS else ""
        raise KubeError(
            f"{kind} {name} not found in namespace {ns}{hint}; `mirrord ls -n {ns}` lists "
            "the targets there"
        ) from None


async def _pick_ready_pod(
    api: KubeApi, ns: str, selector: str, what: str, container: str | None
) -> ResolvedTarget:
    if not selector:
        raise KubeError(f"{what} has no pod selector; mirrord cannot tell which pods are its")
    pods = await api.list(k.PODS, ns, label_selector=selector)
    ready = sorted((p for p in pods if is_ready(p)), key=lambda p: p["metadata"]["name"])
    if not ready:
        if not pods:
            raise KubeError(f"{what} in namespace {ns} has no pods (selector {selector})")
        states = "; ".join(f"{p['metadata']['name']}: {pod_state(p)}" for p in pods[:10])
        raise KubeError(f"{what} in namespace {ns} has no ready pod ({states})")
    pod = ready[0]
    description = f"{what} → pod {pod['metadata']['name']} ({len(ready)} of {len(pods)} ready)"
    return _resolved(pod, ns, container, description)


async def resolve_target(api: KubeApi, target: Target, namespace: str) -> ResolvedTarget:
    ns, name = namespace, str(target.name)
    if target.kind == "pod":
        pod = await _get_or_explain(api, k.PODS, name, ns)
        if (pod.get("status") or {}).get("phase") != "Running" or pod["metadata"].get(
            "deletionTimestamp"
        ):
            raise KubeError(f"pod {name} in namespace {ns} is not running ({pod_state(pod)})")
        return _resolved(pod, ns, target.container, f"pod {name}")
    if target.kind == "labels":
        return await _pick_ready_pod(api, ns, name, f"pods with labels {name}", target.container)
    if target.kind == "service":
        svc = await _get_or_explain(api, k.SERVICES, name, ns)
        sel = (svc.get("spec") or {}).get("selector") or {}
        selector = selector_string({"matchLabels": sel})
        return await _pick_ready_pod(api, ns, selector, f"service/{name}", target.container)
    if target.kind == "cronjob":
        await _get_or_explain(api, k.CRONJOBS, name, ns)
        jobs = [
            j
            for j in await api.list(k.JOBS, ns)
            if any(
                o.get("kind") == "CronJob" and o.get("name") == name
                for o in j["metadata"].get("ownerReferences") or []
            )
        ]
        if not jobs:
            raise KubeError(f"cronjob {name} in namespace {ns} has not started a job yet")
        newest = max(jobs, key=lambda j: j["metadata"].get("creationTimestamp") or "")
        job_name = newest["metadata"]["name"]
        selector = selector_string((newest.get("spec") or {}).get("selector"))
        return await _pick_ready_pod(
            api, ns, selector, f"cronjob/{name} (newest job {job_name})", target.container
        )
    res = WORKLOADS.get(target.kind or "")
    if res is None:
        raise KubeError(f"target kind {target.kind!r} is not a Kubernetes workload")
    obj = await _get_or_explain(api, res, name, ns)
    spec = obj.get("spec") or {}
    selector_obj = spec.get("selector")
    ref = spec.get("workloadRef")
    if target.kind == "rollout" and not selector_obj and ref:
        # A rollout may borrow the pod template (and selector) of an existing Deployment.
        ref_res = WORKLOADS.get(str(ref.get("kind", "")).lower())
        if ref_res is None:
            raise KubeError(f"rollout {name}: unsupported workloadRef kind {ref.get('kind')}")
        referenced = await _get_or_explain(api, ref_res, ref["name"], ns)
        selector_obj = (referenced.get("spec") or {}).get("selector")
    return await _pick_ready_pod(
        api, ns, selector_string(selector_obj), f"{target.kind}/{name}", target.container
    )
