"""#18: a meshed pod on the fake cluster: istio-iptables' sidecar ruleset and a sidecar that
terminates the mesh peers' TLS (tests/features/incoming/test_incoming_mesh.py has both),
the agent from its DaemonSet with only its manifest's capabilities. A filtered steal gets
the plaintext requests its header selects; the rest reach the app through the sidecar."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.features.incoming.incoming_helpers import mirrord_rules, request
from tests.features.incoming.test_incoming_mesh import ISTIO_NAT, SIDECAR, TLS_CLIENT
from tests.kube.fake_cluster import FakeCluster
from tests.kube.fake_tls import ca
from tests.kube.test_kube_exec import LOCAL_HTTP, PY, start_mirrord


def test_a_filtered_steal_of_a_meshed_pod_gets_plaintext(
    cluster: FakeCluster, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.namespace("shop")
    pod = cluster.add_pod("web-1", "shop")
    assert pod is not None
    pod.wait_listening(8080)
    pem = ca().issue("mesh-web", "/CN=web", [f"subjectAltName=IP:{pod.address}"])
    with (tmp_path / "sidecar.log").open("wb") as log:
        pod.spawn([PY, "-c", SIDECAR, str(pem.cert), str(pem.key), pod.address],
                  stdout=log, stderr=log)  # fmt: skip
    pod.wait_listening(15006)
    done = pod.run(["iptables-restore", "--noflush"], input=ISTIO_NAT.encode())
    assert done.returncode == 0, done.stderr
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
        asked = other.run([PY, "-c", TLS_CLIENT, pod.address, "8080", json.dumps(requests)])
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout) == ["pod", "local"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    assert "service mesh in the target: Istio sidecar: port 8080" in err.read_text()
    assert mirrord_rules(pod) == []
