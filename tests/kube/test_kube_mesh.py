"""#18: a meshed pod on the fake cluster: istio-iptables' sidecar ruleset and a sidecar that
terminates the mesh peers' TLS, or istio-cni's ambient ruleset and a ztunnel that
terminates their HBONE tunnels (tests/features/incoming/test_incoming_mesh.py and
test_incoming_ambient.py have them), the agent from its DaemonSet with only its manifest's
capabilities. A filtered steal gets the plaintext requests its header selects; the rest
reach the app through the mesh's proxy."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.features.incoming.incoming_helpers import mirrord_rules, request
from tests.features.incoming.test_incoming_ambient import AMBIENT_RULES, ZTUNNEL, policy_route
from tests.features.incoming.test_incoming_mesh import ISTIO_NAT, SIDECAR, TLS_CLIENT, start_proxy
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_kube_exec import LOCAL_HTTP, PY, start_mirrord


@pytest.mark.parametrize("mesh", ["sidecar", "ambient"])
def test_a_filtered_steal_of_a_meshed_pod_gets_plaintext(
    cluster: FakeCluster, kubeconfig: Path, tmp_path: Path, mesh: str
) -> None:
    cluster.namespace("shop")
    pod = cluster.add_pod("web-1", "shop")
    assert pod is not None
    pod.wait_listening(8080)
    if mesh == "sidecar":
        start_proxy(pod, tmp_path, SIDECAR, [15006, 15001], ISTIO_NAT)
        client_argv = [pod.address, "8080"]
    else:
        policy_route(pod)
        start_proxy(pod, tmp_path, ZTUNNEL, [15008, 15006, 15001], AMBIENT_RULES)
        client_argv = [pod.address, "15008"]
    other = cluster.network.add_pod("mesh-peer", argv=["/bin/sleep", "600"])
    (tmp_path / "web.py").write_text(LOCAL_HTTP)
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": "x-dev: me"}}}}}))  # fmt: skip
    err = tmp_path / "err"
    proc = start_mirrord(
        kubeconfig, "exec", "-n", "shop", "--target", "pod/web-1", "-f", str(config), "--",
        PY, str(tmp_path / "web.py"), stderr=err,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any("mirrord:steal:8080" in r for r in mirrord_rules(pod)):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        requests = [request("/a"), request("/b", {"x-dev": "me"})]
        tunnel = [f"{pod.address}:8080"] if mesh == "ambient" else []
        asked = other.run([PY, "-c", TLS_CLIENT, *client_argv, json.dumps(requests), *tunnel])
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout) == ["pod", "local"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    name = "Istio sidecar" if mesh == "sidecar" else "Istio ambient"
    assert f"service mesh in the target: {name}: port 8080" in err.read_text()
    assert mirrord_rules(pod) == []
