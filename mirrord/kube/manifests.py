"""Every object `mirrord agent install` writes, as plain manifests (pure functions).

The agent runs as a DaemonSet in its own namespace. It listens on its pod's loopback only
(`AGENT_PORT`); the CLI reaches it through the API server's port-forward. Its token lives in
a Secret of that namespace, given to the agent as an environment variable (never argv) and
read by the CLI, so only users allowed to read that one Secret can talk to agents.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import mirrord
from mirrord.config.models import AgentConfig, AgentImage
from mirrord.wire.protocol import OURS as PROTOCOL

AGENT_NAME = "mirrord-agent"
DEFAULT_NAMESPACE = "mirrord"
TOKEN_SECRET = "mirrord-agent-token"
TOKEN_KEY = "token"
AGENT_PORT = 47777
USERS_GROUP = "mirrord:users"
USER_ROLE = "mirrord-user"
DEFAULT_IMAGE = "mirrord-agent"
# The least the agent needs, each for one thing (docs/kubernetes.md, "Capabilities"):
# SYS_ADMIN setns into the target's network namespace; SYS_PTRACE its /proc/PID/root and
# ns/net; NET_ADMIN and NET_RAW its iptables redirects and a mirror's packet socket;
# SETUID and SETGID to act as the target's user on its files, environ and unix sockets
# (agent/creds.py) — in place of DAC_OVERRIDE, which would let it read and write every
# file of every pod on the node.
CAPABILITIES = ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
VERSION_LABEL = "app.kubernetes.io/version"
PROTOCOL_ANNOTATION = "mirrord.dev/protocol"
SELECTOR = {"app.kubernetes.io/name": AGENT_NAME}
# The agent image's entry point takes these arguments (see agent_image/Dockerfile).
AGENT_ENTRY = ["python", "-m", "mirrord.agent"]


def agent_namespace(agent: AgentConfig) -> str:
    return agent.namespace or DEFAULT_NAMESPACE


def agent_image(agent: AgentConfig) -> str:
    image = agent.image
    if isinstance(image, str):
        return image
    if isinstance(image, AgentImage):
        return f"{image.registry or DEFAULT_IMAGE}:{image.tag or mirrord.__version__}"
    return f"{DEFAULT_IMAGE}:{mirrord.__version__}"


def _labels(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **SELECTOR,
        "app.kubernetes.io/part-of": "mirrord",
        VERSION_LABEL: mirrord.__version__,
        **(extra or {}),
    }


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels()}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


# The agent's pods need hostPID, host paths and added capabilities, which Pod Security's
# "baseline" and "restricted" levels refuse: a cluster whose default is one of those admits
# the DaemonSet and creates no pod. Its namespace allows them (and says so).
POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")
}


def namespace_manifest(ns: str) -> dict[str, Any]:
    meta = _meta(ns)
    meta["labels"].update(POD_SECURITY)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def no_agent_pods(ns: str, warnings: tuple[str, ...] = ()) -> str:
    """Why a DaemonSet may have created no agent pod, and where to look. `warnings`: its
    controller's recent Warning events ("Reason: message"), newest first."""
    describe = f"`kubectl -n {ns} describe daemonset {AGENT_NAME}`"
    label = f"`kubectl label ns {ns} pod-security.kubernetes.io/enforce=privileged --overwrite`"
    if warnings:
        said = warnings[0]
        if "PodSecurity" in said:
            fix = (f"the namespace's Pod Security level refuses the agent's pod: {label} "
                   "(a cluster admin may have to)")  # fmt: skip
        elif "forbidden" in said or "denied" in said:
            fix = ("an admission policy refuses the agent's pod (OpenShift SCC, GKE Autopilot, "
                   "Kyverno/Gatekeeper): it must allow its hostPID, host paths and "
                   "capabilities (docs/kubernetes.md)")  # fmt: skip
        else:
            fix = f"see {describe}"
        return (f"the DaemonSet {ns}/{AGENT_NAME} has created no agent pod; its controller "
                f"says: {said}. Fix: {fix}")  # fmt: skip
    return (
        f"the DaemonSet {ns}/{AGENT_NAME} has created no agent pod. Usual causes: the "
        f"namespace's Pod Security level (the agent needs privileged: {label}), another "
        "admission policy (OpenShift SCC, GKE Autopilot), or no node it may run on; its "
        f"events say which: {describe}"
    )


def service_account_manifest(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(AGENT_NAME, ns),
        # The agent never calls the API server.
        "automountServiceAccountToken": False,
    }


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_secret_manifest(ns: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(TOKEN_SECRET, ns),
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def _quantities(values: dict[str, int | str] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (values or {}).items()}


SCRATCH_DIR = "/run/mirrord"
# agent.disable_mesh_sidecar_injection: what Istio, Linkerd and Kuma read to skip a pod.
NO_MESH_LABELS = {"sidecar.istio.io/inject": "false", "kuma.io/sidecar-injection": "disabled"}
NO_MESH_ANNOTATIONS = {
    "sidecar.istio.io/inject": "false",
    "linkerd.io/inject": "disabled",
    "kuma.io/sidecar-injection": "disabled",
}


def daemonset_manifest(agent: AgentConfig) -> dict[str, Any]:
    ns = agent_namespace(agent)
    if agent.privileged:
        security: dict[str, Any] = {"privileged": True, "runAsUser": 0}
    else:
        # Kubernetes makes added capabilities effective only for uid 0 (no ambient
        # capabilities), so the agent runs as root with everything else dropped.
        security = {
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
            "readOnlyRootFilesystem": True,
        }
    resources: dict[str, Any] = {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    if agent.resources is not None:
        resources = {
            key: _quantities(getattr(agent.resources, key))
            for key in ("requests", "limits")
            if getattr(agent.resources, key)
        }
    container: dict[str, Any] = {
        "name": "agent",
        "image": agent_image(agent),
        "imagePullPolicy": agent.image_pull_policy or "IfNotPresent",
        # The image's ENTRYPOINT is the agent (AGENT_ENTRY); these are its arguments.
        "args": [
            "--listen",
            f"127.0.0.1:{AGENT_PORT}",
            "--ping-timeout",
            str(agent.communication_timeout_s),
            *(["-v"] if (agent.log_level or "").lower() in ("debug", "trace") else []),
        ],
        "env": [
            {
                "name": "MIRRORD_AGENT_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY}},
            },
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # The node's address: where kubelet's probes come from when the agent does not
            # share the node's network namespace (agent/incoming/node.py).
            {"name": "MIRRORD_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            # iptables-legacy takes a lock file, /run/xtables.lock by default: on the
            # read-only root it could not be made (iptables-legacy-restore -w: exit 4).
            {"name": "XTABLES_LOCKFILE", "value": f"{SCRATCH_DIR}/xtables.lock"},
        ],
        "securityContext": security,
        "resources": resources,
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_DIR}],
    }
    pod_labels = _labels()
    pod_annotations = {PROTOCOL_ANNOTATION: PROTOCOL}
    if agent.disable_mesh_sidecar_injection is not False:  # upstream's default: true
        # A mesh that injects into the agent's namespace would put a proxy beside it.
        pod_labels.update(NO_MESH_LABELS)
        pod_annotations.update(NO_MESH_ANNOTATIONS)
    pod_labels.update(agent.labels or {})  # the user's own win
    pod_annotations.update(agent.annotations or {})
    pod_spec: dict[str, Any] = {
        "hostPID": True,  # the agent finds targets' PIDs in /proc/*/cgroup of the node
        "serviceAccountName": AGENT_NAME,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 10,
        "nodeSelector": {"kubernetes.io/os": "linux", **(agent.node_selector or {})},
        # By default the agent runs on every node, tainted ones included: a target may be
        # anywhere.
        "tolerations": [
            {k: v for k, v in t.model_dump(exclude_none=True).items()} for t in agent.tolerations
        ]
        if agent.tolerations is not None
        else [{"operator": "Exists"}],
        "containers": [container],
        # The agent's only writable place (its root file system is read-only).
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
    }
    if agent.priority_class:
        pod_spec["priorityClassName"] = agent.priority_class
    if agent.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in agent.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(
            AGENT_NAME,
            ns,
            annotations={PROTOCOL_ANNOTATION: PROTOCOL, **(agent.annotations or {})},
        ),
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": pod_annotations,
                },
                "spec": pod_spec,
            },
        },
    }


# What a user of mirrord needs: read targets anywhere, and reach the agent.
TARGET_READ_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "statefulsets", "replicasets"],
        "verbs": ["get", "list"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["get", "list"]},
    {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get", "list"]},
]
AGENT_ACCESS_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]},
    # Why the DaemonSet has no pod: its controller's FailedCreate events.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": [TOKEN_SECRET],
        "verbs": ["get"],
    },
]


def rbac_manifests(ns: str, group: str = USERS_GROUP) -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io/v1"
    subjects = [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}]
    return [
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": _meta(USER_ROLE),
            "rules": TARGET_READ_RULES,
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": _meta(USER_ROLE),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": USER_ROLE,
            },
            "subjects": subjects,
        },
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": _meta(USER_ROLE, ns),
            "rules": AGENT_ACCESS_RULES,
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": _meta(USER_ROLE, ns),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER_ROLE},
            "subjects": subjects,
        },
    ]


def install_manifests(
    agent: AgentConfig, token: str, users_group: str = USERS_GROUP
) -> list[dict[str, Any]]:
    """Everything `mirrord agent install` writes, in the order it is created."""
    ns = agent_namespace(agent)
    return [
        namespace_manifest(ns),
        service_account_manifest(ns),
        token_secret_manifest(ns, token),
        *rbac_manifests(ns, users_group),
        daemonset_manifest(agent),
    ]
