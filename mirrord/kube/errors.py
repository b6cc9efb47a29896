"""Kubernetes errors, each phrased as what went wrong and what to do about it."""

from __future__ import annotations

import json


class KubeError(Exception):
    """A problem talking to the cluster or resolving a target; the message is for the user."""


class KubeForbidden(KubeError):
    def __init__(self, verb: str, resource: str, namespace: str | None, detail: str) -> None:
        self.verb, self.resource, self.namespace = verb, resource, namespace
        where = f" in namespace {namespace}" if namespace else " (cluster-wide)"
        super().__init__(
            f"forbidden by RBAC: you may not {verb} {resource}{where} ({detail}); ask a "
            "cluster admin for a Role that allows it (docs/kubernetes.md lists what mirrord "
            "needs)"
        )


class KubeNamespaceTerminating(KubeError):
    """403 from the NamespaceLifecycle admission plugin: the namespace is being deleted (not
    an RBAC denial: it passes once the namespace is gone)."""

    def __init__(self, namespace: str | None, detail: str) -> None:
        self.namespace = namespace
        super().__init__(detail)


def is_namespace_terminating(body: bytes) -> bool:
    """Whether a 403 Status body is the namespace-is-terminating refusal."""
    try:
        data = json.loads(body)
        causes = (data.get("details") or {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


class KubeNotFound(KubeError):
    pass


class KubeConflict(KubeError):
    """409: the object already exists (or changed under us)."""


def status_message(body: bytes) -> str:
    """The `message` of a Kubernetes Status body, or the raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300] or "no details"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return str(data)[:300]
