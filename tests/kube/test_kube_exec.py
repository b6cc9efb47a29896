"""`mirrord exec` against the fake cluster: real CLI, real kubernetes-asyncio client, real
port-forward websocket, real agent (started from the image's entry point) in its own pod,
real target pod found by its container ID."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
PRINT_ENV = [
    PY,
    "-c",
    "import os, socket\nfor k in sorted(os.environ): print(f'{k}={os.environ[k]}')\n"
    "print('HOST=' + socket.gethostname())",
]
POD_ENV = {"APP_MODE": "kube", "DB_URL": "postgres://db:5432/shop"}


def mirrord(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [MIRRORD, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def add_deployment(cluster: FakeCluster, name: str, ns: str = "shop") -> None:
    cluster.namespace(ns)
    labels = {"app": name}
    cluster.api.put({"kind": "Deployment", "metadata": {"name": name, "namespace": ns},
                     "spec": {"selector": {"matchLabels": labels}}})  # fmt: skip
    cluster.add_pod(f"{name}-7f9c-aaaaa", ns, labels=labels, env=POD_ENV)


def test_exec_on_a_deployment_sees_the_pods_env_and_installs_the_agent(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    add_deployment(cluster, "checkout")
    r = mirrord(
        kubeconfig, "exec", "-n", "shop", "--target", "deployment/checkout", "--", *PRINT_ENV
    )
    assert r.returncode == 0, r.stderr
    env = parse(r.stdout)
    assert env["APP_MODE"] == "kube"
    assert env["DB_URL"] == "postgres://db:5432/shop"
    assert env["HOST"] == "checkout-7f9c-aaaaa"  # the pod's hostname, through uname
    assert "deployment/checkout → pod checkout-7f9c-aaaaa" in r.stderr
    assert "installing it" in r.stderr
    # It went through the API server's port-forward to the agent pod.
    assert any("/portforward?ports=47777" in path for _, path in apiserver.requests)
    assert apiserver.get("DaemonSet", "mirrord-agent", "mirrord") is not None


def test_exec_says_who_must_install_when_rbac_forbids_it(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    cluster.namespace("shop")
    cluster.add_pod("solo", "shop", backed=False)
    apiserver.forbidden.add(("create", "namespaces"))
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--", "true")
    assert r.returncode == 1
    assert (
        "the mirrord agent is not installed in namespace mirrord, and you may not install "
        "it (you may not create namespaces)" in r.stderr
    )
    assert "A cluster admin must run `mirrord agent install`" in r.stderr
    assert "Traceback" not in r.stderr


def test_version_skew_is_explained(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    from mirrord.config.models import AgentConfig
    from mirrord.kube import manifests as m

    cluster.namespace("shop")
    cluster.add_pod("solo", "shop", backed=False)
    for doc in m.install_manifests(AgentConfig(), "tok")[:3]:
        apiserver.put(doc)
    ds = m.daemonset_manifest(AgentConfig())
    ds["metadata"]["labels"][m.VERSION_LABEL] = "9.0.0"
    ds["metadata"]["annotations"][m.PROTOCOL_ANNOTATION] = "9.0"
    apiserver.put(ds)  # put() fires no hooks: no agent pod is started
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--", "true")
    assert r.returncode == 1
    assert (
        "version skew: the agent installed in namespace mirrord is mirrord 9.0.0 (protocol "
        "9.0), this CLI is mirrord 0.1.0" in r.stderr
    )
    assert "`mirrord agent install`" in r.stderr
    st = mirrord(kubeconfig, "agent", "status")
    assert "version skew" in st.stdout


def test_agent_install_status_uninstall(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    r = mirrord(kubeconfig, "agent", "status", "-o", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["installed"] is False
    r = mirrord(kubeconfig, "agent", "install")
    assert r.returncode == 0, r.stderr
    assert "created DaemonSet mirrord/mirrord-agent" in r.stdout
    token = apiserver.get("Secret", "mirrord-agent-token", "mirrord")
    # Installing again keeps the token (running agents keep accepting their clients).
    r = mirrord(kubeconfig, "agent", "install")
    assert "kept Secret mirrord/mirrord-agent-token" in r.stdout
    assert "updated DaemonSet mirrord/mirrord-agent" in r.stdout
    assert apiserver.get("Secret", "mirrord-agent-token", "mirrord") == token
    deadline = time.monotonic() + 30
    while True:
        st = json.loads(mirrord(kubeconfig, "agent", "status", "-o", "json").stdout)
        if [p["state"] for p in st["pods"]] == ["Ready"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(p["node"], p["state"]) for p in st["pods"]] == [("node-1", "Ready")]
    assert st["version"] == st["cli_version"]
    agent_pods = [p for (ns, _), p in cluster.backing.items() if ns == "mirrord"]
    assert len(agent_pods) == 1
    r = mirrord(kubeconfig, "agent", "uninstall")
    assert r.returncode == 0, r.stderr
    assert "deleted Namespace mirrord" in r.stdout
    assert apiserver.get("DaemonSet", "mirrord-agent", "mirrord") is None
    assert apiserver.get("ClusterRole", "mirrord-user", "") is None
    deadline = time.monotonic() + 10
    while not agent_pods[0].closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_pods[0].closed  # the fake kubelet stopped the agent pod


async def test_port_forward_carries_bytes_and_reports_errors(
    cluster: FakeCluster, kubeconfig: Path
) -> None:
    from mirrord.kube.api import KubeApi, KubeSettings
    from mirrord.kube.portforward import PortForward

    cluster.add_pod("web", "default")  # the default test service: HTTP on 8080 says "pod"
    api = await KubeApi.connect(KubeSettings(kubeconfig=str(kubeconfig)), {})
    forwards = [PortForward(api, "default", "web", 8080), PortForward(api, "default", "web", 9)]
    try:
        host, port = (await forwards[0].start()).split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"pod")
        host, port = (await forwards[1].start()).split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: nothing listens
        writer.close()
        assert "error forwarding port 9 to pod web" in (forwards[1].last_error() or "")
    finally:
        for f in forwards:
            await f.close()
        await api.close()


def test_files_and_outgoing_traffic_through_the_port_forward(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    # The Files and Net services ride the same port-forwarded agent channel as the env.
    cluster.namespace("shop")
    labels = {"app": "orders"}
    cluster.api.put({"kind": "Deployment", "metadata": {"name": "orders", "namespace": "shop"},
                     "spec": {"selector": {"matchLabels": labels}}})  # fmt: skip
    pod = cluster.add_pod(
        "orders-5d8f-bbbbb",
        "shop",
        labels=labels,
        env=POD_ENV,
        files={"/srv/app/config.yaml": b"greeting: from-the-kube-pod\n"},
    )
    assert pod is not None
    pod.wait_listening(8080)  # the pod's own service answers "pod" on its loopback too
    script = (
        "import urllib.request\n"
        "print(open('/srv/app/config.yaml').read().strip())\n"
        "print(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=10).read().decode())\n"
    )
    r = mirrord(
        kubeconfig, "exec", "-n", "shop", "--target", "deployment/orders", "--", PY, "-c", script
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["greeting: from-the-kube-pod", "pod"]
