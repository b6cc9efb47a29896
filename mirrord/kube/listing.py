"""`mirrord ls`: the targets of a namespace, read page by page (`limit`/`continue`).

Kinds are listed concurrently; pods dominate, and each page is parsed as it arrives. Kinds
the cluster does not serve (no Argo Rollouts) or the user may not list are skipped with a
note, except pods, without which there is nothing to target.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from mirrord.kube import api as k
from mirrord.kube.api import KubeApi, Resource
from mirrord.kube.errors import KubeForbidden, KubeNotFound
from mirrord.kube.targets import MESH_SIDECARS

LISTED: tuple[tuple[str, Resource], ...] = (
    ("deployment", k.DEPLOYMENTS),
    ("rollout", k.ROLLOUTS),
    ("statefulset", k.STATEFULSETS),
    ("cronjob", k.CRONJOBS),
    ("job", k.JOBS),
    ("service", k.SERVICES),
)


@dataclass
class Listing:
    namespace: str
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)


def pod_targets(pod: dict[str, Any]) -> list[str]:
    """`pod/NAME` when it has one container, else one `pod/NAME/container/C` per container;
    injected sidecars (a mesh's proxy…) are not offered."""
    if (pod.get("status") or {}).get("phase") != "Running":
        return []
    name = pod["metadata"]["name"]
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    containers = [c for c in containers if c not in MESH_SIDECARS] or containers
    if len(containers) == 1:
        return [f"pod/{name}"]
    return [f"pod/{name}/container/{c}" for c in containers]


async def _pods(api: KubeApi, ns: str) -> list[str]:
    out: list[str] = []
    async for page in api.list_pages(k.PODS, ns):
        for pod in page:
            out.extend(pod_targets(pod))
    return out


async def _names(api: KubeApi, ns: str, kind: str, res: Resource) -> tuple[list[str], str | None]:
    try:
        names = [f"{kind}/{o['metadata']['name']}" async for page in api.list_pages(res, ns)
                 for o in page]  # fmt: skip
    except KubeNotFound:
        return [], None  # the API (e.g. argoproj.io) is not served by this cluster
    except KubeForbidden as exc:
        return [], f"skipped {res.plural}: you may not list them in namespace {exc.namespace}"
    return names, None


# Upstream's target types (`mirrord ls -t TYPE`), in the order listed.
TARGET_TYPES: tuple[str, ...] = ("pod", *(kind for kind, _ in LISTED))


async def list_targets(
    api: KubeApi,
    namespace: str,
    kinds: frozenset[str] | None = None,
    *,
    namespaces: bool = False,
) -> Listing:
    """kinds: only these target types (None: all). namespaces: also list the namespaces
    the user may see (upstream's rich output; a denial is a note, not an error)."""
    listing = Listing(namespace)
    wanted = [(kind, res) for kind, res in LISTED if kinds is None or kind in kinds]
    pods_task = asyncio.ensure_future(
        _pods(api, namespace) if kinds is None or "pod" in kinds else _nothing()
    )
    others = [asyncio.ensure_future(_names(api, namespace, kind, res)) for kind, res in wanted]
    ns_task = asyncio.ensure_future(_namespaces(api) if namespaces else _none())
    try:
        pods = await pods_task
        results = await asyncio.gather(*others)
        listing.namespaces, note = await ns_task
    finally:
        for t in [*others, ns_task]:
            t.cancel()
    listing.targets.extend(sorted(pods))
    for names, found_note in results:
        listing.targets.extend(sorted(names))
        if found_note:
            listing.notes.append(found_note)
    if note:
        listing.notes.append(note)
    return listing


async def _nothing() -> list[str]:
    return []


async def _none() -> tuple[list[str], str | None]:
    return [], None


async def _namespaces(api: KubeApi) -> tuple[list[str], str | None]:
    try:
        names: list[str] = [
            o["metadata"]["name"] async for page in api.list_pages(k.NAMESPACES, None) for o in page
        ]
    except KubeForbidden:
        return [], "namespaces not listed: you may not list them cluster-wide"
    return sorted(names), None
