"""Target resolution and every user-facing error, through the real kubernetes-asyncio client
against the fake API server (no processes needed: pods here are API objects only)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from mirrord.kube.api import KubeApi, KubeSettings
from mirrord.kube.errors import KubeError
from mirrord.kube.targets import resolve_target
from mirrord.target import parse_target
from tests.kube.fake_apiserver import FakeApiServer

NS = "shop"
CID = "containerd://" + "ab" * 32


def pod(name: str, labels: dict[str, str], *, containers: tuple[str, ...] = ("app",),
        phase: str = "Running", ready: bool = True, ns: str = NS) -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-7", "containers": [{"name": c} for c in containers]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {"name": c, "containerID": CID.replace("ab", f"{i:02x}", 1),
                 "state": {"running": {}} if ready else {"waiting": {"reason": "CrashLoopBackOff"}}}
                for i, c in enumerate(containers)
            ],
        },
    }  # fmt: skip


def workload(kind: str, name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": labels}, **spec}}  # fmt: skip


@pytest.fixture
def shop(apiserver: FakeApiServer) -> FakeApiServer:
    api = apiserver
    api.serve_rollouts()
    api.put({"kind": "Namespace", "metadata": {"name": NS}})
    for kind, name in [("Deployment", "checkout"), ("StatefulSet", "db"),
                       ("ReplicaSet", "checkout-7f9c"), ("Rollout", "canary")]:  # fmt: skip
        api.put(workload(kind, name, {"app": name}))
        api.put(pod(f"{name}-1", {"app": name}))
    # A not-ready pod sorts first: it must be skipped.
    api.put(pod("checkout-0", {"app": "checkout"}, ready=False))
    api.put(workload("Deployment", "base", {"app": "base"}))
    api.put(pod("base-1", {"app": "base"}))
    api.put({"kind": "Rollout", "metadata": {"name": "by-ref", "namespace": NS},
             "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "base"}}})  # fmt: skip
    api.put(workload("Job", "migrate", {"job-name": "migrate"}))
    api.put(pod("migrate-x", {"job-name": "migrate"}))
    api.put({"kind": "CronJob", "metadata": {"name": "nightly", "namespace": NS}, "spec": {}})
    for job, ts in [
        ("nightly-100", "2025-01-01T00:00:00Z"),
        ("nightly-200", "2025-01-02T00:00:00Z"),
    ]:
        api.put({"kind": "Job", "metadata": {
            "name": job, "namespace": NS, "creationTimestamp": ts,
            "ownerReferences": [{"kind": "CronJob", "name": "nightly", "apiVersion": "batch/v1",
                                 "uid": "u"}]},
            "spec": {"selector": {"matchLabels": {"job-name": job}}}})  # fmt: skip
        api.put(pod(f"{job}-p", {"job-name": job}))
    api.put({"kind": "Service", "metadata": {"name": "web", "namespace": NS},
             "spec": {"selector": {"app": "checkout"}}})  # fmt: skip
    api.put(pod("multi", {"app": "multi"}, containers=("app", "sidecar")))
    api.put(pod("meshed", {"app": "meshed"}, containers=("app", "istio-proxy")))
    api.put(pod("pending", {}, phase="Pending", ready=False))
    api.put(workload("Deployment", "broken", {"app": "broken"}))
    api.put(pod("broken-1", {"app": "broken"}, ready=False))
    api.put(workload("Deployment", "empty", {"app": "nothing"}))
    api.put({"kind": "CronJob", "metadata": {"name": "never", "namespace": NS}, "spec": {}})
    api.put({"kind": "Service", "metadata": {"name": "external", "namespace": NS}, "spec": {}})
    return api


async def connect(kubeconfig: Path, **kw: Any) -> KubeApi:
    return await KubeApi.connect(KubeSettings(kubeconfig=str(kubeconfig), **kw), {})


@pytest.mark.parametrize(
    ("target", "pod_name", "container"),
    [
        ("pod/checkout-1", "checkout-1", "app"),
        ("pod/multi/container/sidecar", "multi", "sidecar"),
        ("pod/meshed", "meshed", "app"),  # the mesh sidecar is not a candidate
        ("deployment/checkout", "checkout-1", "app"),
        ("statefulset/db", "db-1", "app"),
        ("replicaset/checkout-7f9c", "checkout-7f9c-1", "app"),
        ("job/migrate", "migrate-x", "app"),
        ("cronjob/nightly", "nightly-200-p", "app"),  # the newest job's pod
        ("rollout/canary", "canary-1", "app"),
        ("rollout/by-ref", "base-1", "app"),  # selector from its workloadRef
        ("service/web", "checkout-1", "app"),
        ("labels/app=db", "db-1", "app"),
    ],
)
async def test_every_target_kind_resolves_to_a_ready_pod(
    shop: FakeApiServer, kubeconfig: Path, target: str, pod_name: str, container: str
) -> None:
    api = await connect(kubeconfig)
    try:
        resolved = await resolve_target(api, parse_target(target), NS)
    finally:
        await api.close()
    assert (resolved.pod, resolved.container, resolved.node) == (pod_name, container, "node-7")
    assert resolved.container_id.startswith("containerd://")
    assert pod_name in resolved.description


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("deployment/nope", "deployment nope not found in namespace shop; `mirrord ls -n shop`"),
        ("pod/pending", "pod pending in namespace shop is not running (Pending"),
        ("pod/multi", "pod multi has several containers (app, sidecar); name one, e.g. "
                      "--target pod/multi/container/app"),
        ("pod/multi/container/db",
         "pod multi has no container 'db' (its containers: app, sidecar)"),
        ("deployment/broken", "deployment/broken in namespace shop has no ready pod "
                              "(broken-1: Running, not ready: CrashLoopBackOff)"),
        ("deployment/empty",
         "deployment/empty in namespace shop has no pods (selector app=nothing)"),
        ("cronjob/never", "cronjob never in namespace shop has not started a job yet"),
        ("service/external", "service/external has no pod selector"),
    ],
)  # fmt: skip
async def test_resolution_errors_say_what_to_do(
    shop: FakeApiServer, kubeconfig: Path, target: str, message: str
) -> None:
    api = await connect(kubeconfig)
    try:
        with pytest.raises(KubeError) as err:
            await resolve_target(api, parse_target(target), NS)
    finally:
        await api.close()
    assert message in str(err.value)


async def test_rollouts_without_argo_say_so(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    apiserver.put({"kind": "Namespace", "metadata": {"name": NS}})
    api = await connect(kubeconfig)
    try:
        with pytest.raises(KubeError, match=r"rollout x not found .*is Argo Rollouts installed"):
            await resolve_target(api, parse_target("rollout/x"), NS)
    finally:
        await api.close()


async def test_forbidden_names_the_verb_and_the_resource(
    shop: FakeApiServer, kubeconfig: Path
) -> None:
    shop.forbidden.add(("list", "pods"))
    api = await connect(kubeconfig)
    try:
        with pytest.raises(KubeError) as err:
            await resolve_target(api, parse_target("deployment/checkout"), NS)
    finally:
        await api.close()
    assert "forbidden by RBAC: you may not list pods in namespace shop" in str(err.value)
    assert 'User "dev" cannot list resource "pods"' in str(err.value)


async def test_bad_credentials(shop: FakeApiServer, tmp_path: Path) -> None:
    kc = shop.write_kubeconfig(tmp_path / "kc", token="wrong")
    api = await connect(kc)
    try:
        with pytest.raises(KubeError, match=r"rejected our credentials .401 Unauthorized"):
            await resolve_target(api, parse_target("pod/checkout-1"), NS)
    finally:
        await api.close()


async def test_no_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match=r"no Kubernetes configuration: no kubeconfig at .*missing"):
        await KubeApi.connect(KubeSettings(kubeconfig=str(tmp_path / "missing")), {})
    with pytest.raises(KubeError, match=r"no kubeconfig at /nowhere/\.kube/config"):
        await KubeApi.connect(KubeSettings(), {"HOME": "/nowhere"})


async def test_unknown_context_lists_the_known_ones(kubeconfig: Path) -> None:
    with pytest.raises(KubeError, match=r"context 'prod' is not in .*contexts: fake, other"):
        await KubeApi.connect(KubeSettings(kubeconfig=str(kubeconfig), context="prod"), {})


async def test_context_namespace_and_kubeconfig_env(kubeconfig: Path) -> None:
    api = await KubeApi.connect(KubeSettings(), {"KUBECONFIG": str(kubeconfig)})
    await api.close()
    assert (api.context, api.namespace) == ("fake", "default")
    api = await connect(kubeconfig, context="other")
    await api.close()
    assert api.namespace == "default"


async def test_unreachable_api_server(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = FakeApiServer()
    server.url = f"http://127.0.0.1:{port}"
    kc = server.write_kubeconfig(tmp_path / "kc")
    api = await connect(kc)
    try:
        with pytest.raises(
            KubeError, match=f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
        ):
            await resolve_target(api, parse_target("pod/x"), NS)
    finally:
        await api.close()
