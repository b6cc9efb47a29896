"""`mirrord port-forward` against the fake cluster (real CLI, kubernetes-asyncio client,
API server port-forward websocket, the agent from the image's entry point in its own pod):
-L connects from the target pod's network, -R steals or mirrors the pod's port to this
machine, the agent's rules go with Ctrl-C, and losing the agent's pod ends the session."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Pod
from tests.features.incoming.incoming_helpers import mirrord_rules, request, wait_until
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_kube_exec import kube_env
from tests.portforward.test_cli import PortForward, free_port
from tests.portforward.test_reverse import LocalServer, body

pytestmark = pytest.mark.root

PY = "/usr/bin/python3"
# A server on the pod's loopback only: nothing outside the pod's netns can reach it.
LOOPBACK_SERVER = """
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "12"); self.end_headers()
        self.wfile.write(b"pod-loopback")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def get(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return bytes(r.read())


def add_deployment(cluster: FakeCluster, name: str, ns: str = "shop") -> Pod:
    cluster.namespace(ns)
    labels = {"app": name}
    cluster.api.put({"kind": "Deployment", "metadata": {"name": name, "namespace": ns},
                     "spec": {"selector": {"matchLabels": labels}}})  # fmt: skip
    pod = cluster.add_pod(f"{name}-5d8f-bbbbb", ns, labels=labels)
    assert pod is not None
    pod.wait_listening(8080)  # the default service: "pod"
    return pod


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


def test_forward_connects_from_the_target_pods_network(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    pod = add_deployment(cluster, "orders")
    port = free_port()  # on this machine's loopback: a decoy the forward must not reach
    decoy = LocalServer(b"this-machine")
    pod.spawn([PY, "-c", LOOPBACK_SERVER, str(port)])
    pod.wait_listening(port)
    lo, by_name = free_port(), free_port()
    pf = PortForward(
        ["-n", "shop", "-t", "deployment/orders",
         "-L", f"{lo}:127.0.0.1:{port}", "--port-mappings", f"{by_name}:orders-5d8f-bbbbb:8080"],
        env=kube_env(kubeconfig),
    )  # fmt: skip
    try:
        line = pf.wait_for(f"forwarding 127.0.0.1:{lo}")
        assert line == (
            f"mirrord: forwarding 127.0.0.1:{lo} -> 127.0.0.1:{port} from the target's network "
            "(deployment/orders)"
        )
        pf.wait_for(f"forwarding 127.0.0.1:{by_name}")
        assert get(lo) == b"pod-loopback"  # the pod's loopback, not this machine's
        assert get(lo) == b"pod-loopback"
        # The pod's hostname, known only to the pod's /etc/hosts, resolved by the agent.
        assert get(by_name) == b"pod"
        assert decoy.seen == []
        code = pf.stop()
    finally:
        pf.kill()
        decoy.close()
    assert code == 0, pf.stderr
    assert "Traceback" not in pf.stderr
    assert "deployment/orders → pod orders-5d8f-bbbbb" in pf.stderr
    assert any("/portforward?ports=47777" in path for _, path in apiserver.requests)


@pytest.mark.parametrize("mode", ["steal", "mirror"])
def test_reverse_takes_the_pods_port_to_this_machine(
    cluster: FakeCluster, kubeconfig: Path, local_server: LocalServer, tmp_path: Path, mode: str
) -> None:
    cluster.namespace("shop")
    pod = cluster.add_pod("web-1", "shop")
    assert pod is not None
    pod.wait_listening(8080)
    other = cluster.network.add_pod("other", argv=["/bin/sleep", "600"])
    cfg = tmp_path / "mirrord.toml"
    cfg.write_text(f'[feature.network]\nincoming = "{mode}"\n')
    pf = PortForward(
        ["-f", str(cfg), "-n", "shop", "-t", "pod/web-1", "-R", f"8080:{local_server.port}"],
        env=kube_env(kubeconfig),
    )
    try:
        verb = "stealing" if mode == "steal" else "mirroring"
        line = pf.wait_for(f"{verb} port 8080")
        assert line.startswith(
            f"mirrord: {verb} port 8080 of the target (pod/web-1) -> 127.0.0.1:{local_server.port}"
        )
        from tests.features.incoming.incoming_helpers import send_requests

        answers = send_requests(other, pod.address, 8080, [request("/x", {"x-user": "k"})])
        if mode == "steal":
            assert [body(a) for a in answers] == ["local"]
            assert local_server.seen == [("/x", "k")]
        else:
            assert [body(a) for a in answers] == ["pod"]
            wait_until(lambda: local_server.seen)
            assert local_server.seen == [("/x", "k")]
        # A steal redirects; a mirror reads copies of the packets and puts no rule.
        assert (mirrord_rules(pod) != []) == (mode == "steal")
        code = pf.stop()
    finally:
        pf.kill()
    assert code == 0, pf.stderr
    assert "Traceback" not in pf.stderr
    wait_until(lambda: mirrord_rules(pod) == [])  # the shared agent ends the session
    assert mirrord_rules(pod) == []


def test_losing_the_agent_pod_ends_the_session(
    cluster: FakeCluster, kubeconfig: Path, local_server: LocalServer
) -> None:
    cluster.namespace("shop")
    pod = cluster.add_pod("web-2", "shop")
    assert pod is not None
    pf = PortForward(
        ["-n", "shop", "-t", "pod/web-2", "-R", f"8080:{local_server.port}",
         "-L", f"{free_port()}:127.0.0.1:8080"],
        env=kube_env(kubeconfig),
    )  # fmt: skip
    try:
        pf.wait_for("mirroring port 8080")
        agents = [p for (ns, _), p in cluster.backing.items() if ns == "mirrord"]
        assert len(agents) == 1
        agents[0].close()
        code = pf.wait(timeout=60)
    finally:
        pf.kill()
    assert code == 1, pf.stderr
    assert "mirrord: lost the agent: " in pf.stderr
    assert "Traceback" not in pf.stderr


def test_targetless_in_the_cluster_says_where_it_connects_from(
    cluster: FakeCluster, kubeconfig: Path, tmp_path: Path
) -> None:
    pod = cluster.add_pod("api", "default")
    assert pod is not None
    lport = free_port()
    env = kube_env(kubeconfig)
    del env["KUBECONFIG"]
    pf = PortForward(
        ["--kubeconfig", str(kubeconfig), "-L", f"{lport}:{pod.address}:8080"], env=env
    )
    try:
        line = pf.wait_for("forwarding")
        assert line == (
            f"mirrord: forwarding 127.0.0.1:{lport} -> {pod.address}:8080 from the mirrord "
            "agent's pod in the cluster (targetless)"
        )
        assert get(lport) == b"pod"
        code = pf.stop()
    finally:
        pf.kill()
    assert code == 0, pf.stderr


def test_a_missing_target_is_a_clean_error(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.namespace("shop")
    lport = free_port()
    pf = PortForward(
        ["-n", "shop", "-t", "pod/gone", "-L", f"{lport}:127.0.0.1:8080"], env=kube_env(kubeconfig)
    )
    try:
        code = pf.wait(timeout=60)
    finally:
        pf.kill()
    assert code == 1, pf.stderr
    assert "gone" in pf.stderr and "not found" in pf.stderr, pf.stderr
    assert "forwarding" not in pf.stderr
    assert "Traceback" not in pf.stderr
