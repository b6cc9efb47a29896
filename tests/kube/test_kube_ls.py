"""`mirrord ls` through the real client, paginated, against 10 000 fake pods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.test_kube_exec import mirrord
from tests.kube.test_kube_targets import pod, workload

N = 10_000


def fill(api: FakeApiServer, ns: str, n: int) -> None:
    api.put({"kind": "Namespace", "metadata": {"name": ns}})
    for i in range(n):
        api.put(pod(f"app-{i:05d}", {"app": "big"}, ns=ns))


def test_ls_lists_every_kind_and_container(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    from tests.kube.test_kube_targets import NS

    apiserver.put({"kind": "Namespace", "metadata": {"name": NS}})
    apiserver.put(pod("single", {}))
    apiserver.put(pod("multi", {}, containers=("app", "sidecar")))
    # A mesh's proxy is not offered (exec would skip it too): the app is the pod's target.
    apiserver.put(pod("meshed", {}, containers=("web", "istio-proxy")))
    apiserver.put(pod("pending", {}, phase="Pending", ready=False))
    apiserver.put(workload("Deployment", "checkout", {"app": "checkout"}))
    apiserver.put(workload("StatefulSet", "db", {"app": "db"}))
    apiserver.forbidden.add(("list", "cronjobs"))
    r = mirrord(kubeconfig, "ls", "-n", NS, "-o", "text")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "pod/meshed", "pod/multi/container/app", "pod/multi/container/sidecar", "pod/single",
        "deployment/checkout", "statefulset/db",
    ]  # fmt: skip
    assert "note: skipped cronjobs: you may not list them in namespace shop" in r.stderr
    apiserver.forbidden.add(("list", "pods"))
    r = mirrord(kubeconfig, "ls", "-n", NS)
    assert r.returncode == 1
    assert "forbidden by RBAC: you may not list pods in namespace shop" in r.stderr


def test_ls_of_ten_thousand_pods_is_paginated_and_fast(
    apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    fill(apiserver, "big", N)
    r = mirrord(kubeconfig, "ls", "-n", "big")
    assert r.returncode == 0, r.stderr
    targets = json.loads(r.stdout)  # upstream's default: a JSON list of paths
    assert len(targets) == N and targets[0] == "pod/app-00000" and targets[-1] == "pod/app-09999"
    pod_lists = [p for m, p in apiserver.requests if p.startswith("/api/v1/namespaces/big/pods?")]
    assert len(pod_lists) == N // 500  # pages of 500, following `continue`
    assert sum("continue=" in p for p in pod_lists) == N // 500 - 1


def test_ls_speaks_upstreams_json_yaml_and_target_types(
    apiserver: FakeApiServer, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.kube.test_kube_targets import NS

    apiserver.put({"kind": "Namespace", "metadata": {"name": NS}})
    apiserver.put({"kind": "Namespace", "metadata": {"name": "other"}})
    apiserver.put(pod("single", {}))
    apiserver.put(workload("Deployment", "checkout", {"app": "checkout"}))
    r = mirrord(kubeconfig, "ls", "-n", NS)
    assert json.loads(r.stdout) == ["pod/single", "deployment/checkout"], r.stderr
    before = len(apiserver.requests)
    r = mirrord(kubeconfig, "ls", "-n", NS, "-t", "deployment")
    assert json.loads(r.stdout) == ["deployment/checkout"], r.stderr
    asked = [p for _, p in apiserver.requests[before:]]
    assert asked and not any("/pods?" in p for p in asked)  # pods not even listed
    r = mirrord(kubeconfig, "ls", "-n", NS, "-o", "yaml")
    assert yaml.safe_load(r.stdout) == ["pod/single", "deployment/checkout"]
    monkeypatch.setenv("MIRRORD_LS_RICH_OUTPUT", "true")
    monkeypatch.setenv("MIRRORD_LS_TARGET_TYPES", '["pod"]')
    r = mirrord(kubeconfig, "ls", "-n", NS)
    assert json.loads(r.stdout) == {
        "targets": [{"path": "pod/single", "available": True}],
        "current_namespace": NS,
        "namespaces": ["other", NS],
    }
    r = mirrord(kubeconfig, "ls", "-n", NS, "-t", "podz")
    assert r.returncode == 2 and "unknown target type 'podz'" in r.stderr
