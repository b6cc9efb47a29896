"""Kubernetes: targets, the agent DaemonSet, port-forward, `mirrord ls` (docs/kubernetes.md).

The only package that imports kubernetes_asyncio. This module itself stays light (no
kubernetes_asyncio import) so `mirrord.run` can ask `uses_cluster` cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mirrord.config import MirrordConfig
from mirrord.kube.errors import KubeError
from mirrord.kube.kubeconfig import has_current_context
from mirrord.target import Target


def uses_cluster(
    config: MirrordConfig, target: Target, environ: Mapping[str, str] | None = None
) -> bool:
    """Kubernetes targets always. Without a target, as upstream: the cluster when a
    kubeconfig names a current context (targetless in the cluster: outgoing traffic and DNS
    leave from there). `pid/N` is local; an explicit `targetless` is local unless the config
    names a cluster (`kubeconfig`, `kube_context`, --kubeconfig, --context)."""
    if target.is_kube:
        return True
    if target.pid is not None:
        return False
    if config.kubeconfig or config.kube_context:
        return True
    if config.target.path is None:
        return has_current_context(os.environ if environ is None else environ)
    return False


__all__ = ["KubeError", "uses_cluster"]
