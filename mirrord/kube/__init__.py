"""Kubernetes: targets, the agent DaemonSet, port-forward, `mirrord ls` (docs/kubernetes.md).

The only package that imports kubernetes_asyncio. This module itself stays light (no
kubernetes_asyncio import) so `mirrord.run` can ask `uses_cluster` cheaply.
"""

from __future__ import annotations

from mirrord.config import MirrordConfig
from mirrord.kube.errors import KubeError
from mirrord.target import Target


def uses_cluster(config: MirrordConfig, target: Target) -> bool:
    """Kubernetes targets always; targetless only when the config names a cluster
    (`kubeconfig` or `kube_context`, also from --kubeconfig/--context), so plain
    `mirrord exec -- cmd` keeps using a local agent."""
    if target.is_kube:
        return True
    return target.pid is None and bool(config.kubeconfig or config.kube_context)


__all__ = ["KubeError", "uses_cluster"]
