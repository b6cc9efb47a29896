"""#18: the fake API server driven by the real `kubectl`, so it cannot drift from
kube-apiserver unnoticed: TLS with a token or a client certificate, discovery, Table output,
apply twice (client-side and server-side), label, 422 validation, server dry-run, watch,
rollout restart and status of the agent DaemonSet, its logs, `auth can-i`, a Terminating
namespace.

Not here: `kubectl port-forward`. kubectl 1.32 tunnels SPDY inside a websocket
(`SPDY/3.1+portforward.k8s.io`), which the fake does not speak; mirrord's own client uses
the `v4.channel.k8s.io` websocket protocol, tested in test_kube_exec.py and
test_kube_portforward.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_kube_exec import DEFAULT_IMAGE, add_deployment, mirrord

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: LABEL}}
    spec:
      containers: [{name: app, image: IMAGE}]
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
        self.env.pop("KUBECACHEDIR", None)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        r = subprocess.run(
            [KUBECTL, *args], capture_output=True, text=True, timeout=90, env=self.env
        )
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    def apply(self, tmp: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
        path = tmp / "manifest.yaml"
        path.write_text(text)
        return self("apply", "-f", str(path), *args, check=False)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    home = tmp_path / "home"
    home.mkdir()
    return Kubectl(kubeconfig, home)


def deployment(image: str, label: str = "web") -> str:
    return DEPLOYMENT.replace("IMAGE", image).replace("LABEL", label)


def test_kubectl_reads_and_writes_it_as_a_cluster(
    cluster: FakeCluster, apiserver: FakeApiServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.32.0-fake"
    resources = kubectl("api-resources").stdout
    assert any(line.split()[:5] == ["daemonsets", "ds", "apps/v1", "true", "DaemonSet"]
               for line in resources.splitlines())  # fmt: skip
    cluster.namespace("shop")
    cluster.add_pod("web-1", "shop", backed=False)
    table = kubectl("get", "pods", "-n", "shop").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[1].split()[:4] == ["web-1", "1/1", "Running", "0"]
    assert kubectl("get", "po/web-1", "-n", "shop", "-o", "name").stdout.strip() == "pod/web-1"

    # apply: created, unchanged, configured (a strategic merge patch); then server-side.
    assert "deployment.apps/web created" in kubectl.apply(tmp_path, deployment("app:1")).stdout
    assert "deployment.apps/web unchanged" in kubectl.apply(tmp_path, deployment("app:1")).stdout
    assert "deployment.apps/web configured" in kubectl.apply(tmp_path, deployment("app:2")).stdout
    image = "jsonpath={.spec.template.spec.containers[0].image}"
    assert kubectl("get", "deploy", "web", "-n", "shop", "-o", image).stdout == "app:2"
    r = kubectl.apply(tmp_path, deployment("app:3"), "--server-side")
    assert "deployment.apps/web serverside-applied" in r.stdout, r.stderr
    assert kubectl("get", "deploy", "web", "-n", "shop", "-o", image).stdout == "app:3"
    assert apiserver.get("Deployment", "web", "shop")["metadata"]["generation"] == 3  # type: ignore[index]

    # 422s, as kube-apiserver's validation says them.
    r = kubectl.apply(tmp_path, deployment("app:4", label="other"))
    assert r.returncode == 1
    assert "`selector` does not match template `labels`" in r.stderr, r.stderr
    r = kubectl.apply(tmp_path, deployment("app:4").replace("image:", "imagen:"))
    assert r.returncode == 1 and "imagen" in r.stderr, r.stderr  # unknown field, strict
    assert kubectl("get", "deploy", "web", "-n", "shop", "-o", image).stdout == "app:3"

    # label (a merge patch), and the label is there.
    kubectl("label", "ns", "shop", "team=checkout")
    labels = kubectl("get", "ns", "shop", "-o", "jsonpath={.metadata.labels.team}").stdout
    assert labels == "checkout"

    # server dry run deletes nothing; a real delete does.
    assert "(server dry run)" in kubectl("delete", "deploy", "web", "-n", "shop",
                                         "--dry-run=server").stdout  # fmt: skip
    assert apiserver.get("Deployment", "web", "shop") is not None
    kubectl("delete", "deploy", "web", "-n", "shop")
    assert apiserver.get("Deployment", "web", "shop") is None

    # watch: a pod created after the watch started is seen.
    assert KUBECTL is not None
    watch = subprocess.Popen(
        [KUBECTL, "get", "pods", "-n", "shop", "--watch-only", "-o", "name"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kubectl.env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not any(m == "GET" and "watch=true" in p and "/pods" in p
                      for m, p in apiserver.requests):  # fmt: skip
            assert time.monotonic() < deadline and watch.poll() is None
            time.sleep(0.05)
        cluster.add_pod("web-2", "shop", backed=False)
        assert watch.stdout is not None
        assert watch.stdout.readline().strip() == "pod/web-2"
    finally:
        watch.kill()
        watch.wait()

    # A deleted namespace is Terminating for a while, as kubectl shows it.
    apiserver.terminating_s = 30
    kubectl("delete", "ns", "shop", "--wait=false")
    assert kubectl("get", "ns", "shop", "--no-headers").stdout.split()[1] == "Terminating"
    r = kubectl.apply(tmp_path, deployment("app:5"))
    assert "because it is being terminated" in r.stderr, r.stderr


def test_kubectl_rolls_the_agent_daemonset_and_mirrord_follows(
    cluster: FakeCluster, apiserver: FakeApiServer, kubectl: Kubectl, kubeconfig: Path
) -> None:
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
    assert r.returncode == 0, r.stderr
    status = kubectl("-n", "mirrord", "rollout", "status", "ds/mirrord-agent", "--timeout=60s")
    assert "successfully rolled out" in status.stdout
    table = kubectl("-n", "mirrord", "get", "ds").stdout.splitlines()
    assert table[1].split()[:6] == ["mirrord-agent", "1", "1", "1", "1", "1"]
    before = {name for (ns, name) in cluster.backing if ns == "mirrord"}
    kubectl("-n", "mirrord", "rollout", "restart", "daemonset", "mirrord-agent")
    status = kubectl("-n", "mirrord", "rollout", "status", "ds/mirrord-agent", "--timeout=60s")
    assert "successfully rolled out" in status.stdout
    deadline = time.monotonic() + 30
    while True:
        after = {name for (ns, name) in cluster.backing if ns == "mirrord"}
        if after and not after & before:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)
    add_deployment(cluster, "checkout")
    r = mirrord(kubeconfig, "exec", "-n", "shop", "--target", "deployment/checkout", "--", "true")
    assert r.returncode == 0, r.stderr
    # The agent's log, as a user debugging it reads it.
    logs = kubectl("-n", "mirrord", "logs", "-l", "app.kubernetes.io/name=mirrord-agent").stdout
    assert "session" in logs, logs
    # What mirrord needs, as `kubectl auth can-i` says it (SelfSubjectAccessReview).
    can = kubectl(
        "auth", "can-i", "create", "pods", "--subresource=portforward", "-n", "mirrord", check=False
    )
    assert can.stdout.strip() == "yes"
    apiserver.forbidden.add(("create", "pods/portforward"))
    cannot = kubectl(
        "auth", "can-i", "create", "pods", "--subresource=portforward", "-n", "mirrord", check=False
    )
    assert cannot.stdout.strip() == "no - forbidden by RBAC" and cannot.returncode == 1


def test_client_certificates_and_the_servers_ca(
    cluster: FakeCluster, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dev = apiserver.write_kubeconfig(tmp_path / "dev", client_cert=apiserver.user)
    assert Kubectl(dev, home)("get", "ns", "-o", "name").stdout.split() == ["namespace/default"]
    r = mirrord(dev, "ls", "-n", "default")
    assert r.returncode == 0, r.stderr
    mallory = apiserver.write_kubeconfig(tmp_path / "mallory", client_cert="mallory")
    r = Kubectl(mallory, home)("get", "ns", check=False)
    assert r.returncode == 1 and 'User "mallory" cannot list resource "namespaces"' in r.stderr
    no_ca = apiserver.write_kubeconfig(tmp_path / "no-ca", ca_data=False)
    r = Kubectl(no_ca, home)("get", "ns", check=False)
    assert r.returncode == 1 and "certificate signed by unknown authority" in r.stderr
    r = mirrord(no_ca, "ls", "-n", "default")
    assert r.returncode != 0
    assert "has a certificate we do not trust" in r.stderr, r.stderr
    assert "-c / accept_invalid_certificates" in r.stderr
    # -c: the exec's REST calls and its port-forward websocket both skip the check.
    add_deployment(cluster, "checkout")
    r = mirrord(no_ca, "exec", "-c", "-n", "shop", "--target", "deployment/checkout", "--", "true")
    assert r.returncode == 0, r.stderr
