"""`mirrord exec` against the fake cluster: real CLI, real kubernetes-asyncio client, real
port-forward websocket, real agent (started from the image's entry point) in its own pod,
real target pod found by its container ID."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirrord import __version__
from mirrord.config.models import AgentConfig
from mirrord.kube import manifests as m
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
DEFAULT_IMAGE = m.agent_image(AgentConfig())  # the fake kubelet "has" it


def kube_env(kubeconfig: Path) -> dict[str, str]:
    """Ours, with this kubeconfig and no config file of the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MIRRORD_CONFIG_FILE")}
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def mirrord(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIRRORD, *args], capture_output=True, text=True, timeout=timeout, env=kube_env(kubeconfig)
    )


def start_mirrord(
    kubeconfig: Path, *args: str, stderr: Path, stdout: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """`mirrord ARGS` running in its own session (stop it with os.killpg), its stderr in a
    file; stdout text (subprocess.PIPE to read it)."""
    with stderr.open("wb") as sink:
        return subprocess.Popen(
            [MIRRORD, *args], stdout=stdout, stderr=sink, env=kube_env(kubeconfig), text=True,
            start_new_session=True,
        )  # fmt: skip


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


def test_a_forbidden_port_forward_is_said_at_once(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    """A 403 on pods/portforward will not change by retrying: exec says so at once instead
    of retrying until its timeout (600 s here; the run's own bound is 60 s)."""
    add_deployment(cluster, "checkout")
    apiserver.forbidden.add(("create", "pods/portforward"))
    r = mirrord(kubeconfig, "exec", "-n", "shop", "--target", "deployment/checkout",
                "--agent-startup-timeout", "600", "--", "true")  # fmt: skip
    assert r.returncode != 0
    assert "forbidden: you need `create pods/portforward`" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_token_the_agent_pods_do_not_have_is_explained_in_kube_words(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    add_deployment(cluster, "checkout")
    target = ["exec", "-n", "shop", "--target", "deployment/checkout", "--", "true"]
    r = mirrord(kubeconfig, *target)
    assert r.returncode == 0, r.stderr  # installed; its pod runs with the Secret's token
    secret = next(d for d in m.install_manifests(AgentConfig(), "rotated") if d["kind"] == "Secret")
    apiserver.put(secret)  # re-created with another token; the running pod keeps the old one
    r = mirrord(kubeconfig, *target)
    assert r.returncode != 0
    assert "refused the token of the Secret mirrord/mirrord-agent-token" in r.stderr, r.stderr
    assert "kubectl -n mirrord rollout restart daemonset mirrord-agent" in r.stderr
    assert "MIRRORD_AGENT_TOKEN" not in r.stderr


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
        f"9.0), this CLI is mirrord {__version__}" in r.stderr
    )
    assert "`mirrord agent install`" in r.stderr
    st = mirrord(kubeconfig, "agent", "status")
    assert "version skew" in st.stdout


def test_pod_security_and_a_daemonset_without_pods_are_explained(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    # The namespace exists already, made without the Pod Security labels.
    apiserver.put({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "mirrord", "labels": {"team": "dev"}}})  # fmt: skip
    for doc in m.install_manifests(AgentConfig(), "tok")[1:]:
        apiserver.put(doc)  # put() fires no hooks: the DaemonSet gets no pod
    st = mirrord(kubeconfig, "agent", "status")
    assert st.returncode == 3
    assert "has created no agent pod" in st.stdout
    assert "kubectl label ns mirrord pod-security.kubernetes.io/enforce=privileged" in st.stdout
    cluster.add_pod("solo", "shop", backed=False)
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--agent-startup-timeout",
                "1", "--", "true")  # fmt: skip
    assert r.returncode != 0 and "has created no agent pod" in r.stderr, r.stderr
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
    assert r.returncode == 0, r.stderr
    assert "labelled Namespace mirrord for Pod Security (privileged)" in r.stdout
    labels = apiserver.get("Namespace", "mirrord")["metadata"]["labels"]
    assert labels["team"] == "dev"  # the namespace's own labels stay
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
    assert "kept Namespace mirrord" in r.stdout  # labelled already: left alone


def test_a_daemonset_that_pod_security_refuses_is_explained_from_its_events(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    """#18: a cluster whose Pod Security default is "baseline", an agent namespace we may
    not label: the DaemonSet controller's pods are refused, which only its FailedCreate
    events say. Exec says it at once (600 s start-up timeout; the run's own bound is 60 s),
    agent status with exit 3; once labelled, the agent runs."""
    cluster.pod_security_default = "baseline"
    apiserver.put({"kind": "Namespace", "metadata": {"name": "mirrord"}})
    apiserver.forbidden.add(("update", "namespaces"))
    cluster.add_pod("solo", "shop")
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--agent-startup-timeout",
                "600", "--", "true")  # fmt: skip
    assert r.returncode != 0
    refused = 'its controller says: FailedCreate: Error creating: pods "mirrord-agent-'
    assert refused in r.stderr, r.stderr
    assert 'violates PodSecurity "baseline:latest": host namespaces (hostPID=true)' in r.stderr
    label = "kubectl label ns mirrord pod-security.kubernetes.io/enforce=privileged --overwrite"
    assert label in r.stderr
    st = mirrord(kubeconfig, "agent", "status")
    assert st.returncode == 3
    assert refused in st.stdout and label in st.stdout
    apiserver.forbidden.clear()
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
    assert "labelled Namespace mirrord for Pod Security (privileged)" in r.stdout, r.stderr
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--", "true")
    assert r.returncode == 0, r.stderr


def test_an_agent_image_the_node_cannot_pull_fails_at_once_with_the_fix(
    cluster: FakeCluster, kubeconfig: Path
) -> None:
    """ErrImagePull does not pass by itself: exec says so at the first look, naming the
    image and agent.image, instead of waiting out the start-up timeout (600 s here; the
    run's own bound is 60 s)."""
    cluster.unpullable.add(m.agent_image(AgentConfig()))
    cluster.add_pod("solo", "shop", backed=False)
    r = mirrord(kubeconfig, "exec", "-n", "shop", "-t", "pod/solo", "--agent-startup-timeout",
                "600", "--", "true")  # fmt: skip
    assert r.returncode != 0
    assert f"image {m.agent_image(AgentConfig())} cannot be pulled" in r.stderr, r.stderr
    assert "ErrImagePull" in r.stderr and "agent.image" in r.stderr
    assert "Traceback" not in r.stderr


def test_agent_install_wants_the_image_named(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    r = mirrord(kubeconfig, "agent", "install")
    assert r.returncode == 2
    assert f"the default agent image {DEFAULT_IMAGE} is in no registry" in r.stderr
    assert f"--image REGISTRY/{DEFAULT_IMAGE}" in r.stderr
    assert apiserver.get("DaemonSet", "mirrord-agent", "mirrord") is None  # nothing made
    r = mirrord(kubeconfig, "agent", "install", "--image", "reg.example/mirrord-agent:1")
    assert r.returncode == 0, r.stderr
    ds = apiserver.get("DaemonSet", "mirrord-agent", "mirrord")
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/mirrord-agent:1"


def test_agent_install_status_uninstall(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    r = mirrord(kubeconfig, "agent", "status", "-o", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["installed"] is False
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
    assert r.returncode == 0, r.stderr
    assert "created DaemonSet mirrord/mirrord-agent" in r.stdout
    token = apiserver.get("Secret", "mirrord-agent-token", "mirrord")
    # Installing again keeps the token (running agents keep accepting their clients).
    r = mirrord(kubeconfig, "agent", "install", "--image", DEFAULT_IMAGE)
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


def test_a_terminating_agent_namespace_is_waited_for_then_installed_again(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    """#18: right after an uninstall the namespace is Terminating and refuses new content
    (403, NamespaceTerminating): not an RBAC problem. Exec waits for it to go, then
    installs; a namespace that never goes is said, with where to look."""
    add_deployment(cluster, "checkout")
    target = ["exec", "-n", "shop", "--target", "deployment/checkout", "--", "true"]
    assert mirrord(kubeconfig, *target).returncode == 0
    apiserver.terminating_s = 2.0
    r = mirrord(kubeconfig, "agent", "uninstall")
    assert r.returncode == 0, r.stderr
    assert apiserver.get("Namespace", "mirrord", "")["status"]["phase"] == "Terminating"  # type: ignore[index]
    r = mirrord(kubeconfig, *target)
    assert r.returncode == 0, r.stderr
    assert "namespace mirrord is being deleted (Terminating" in r.stderr
    assert "may not" not in r.stderr  # no RBAC advice
    assert apiserver.get("DaemonSet", "mirrord-agent", "mirrord") is not None
    # A finalizer that never finishes: `agent install` gives up with the way to look.
    apiserver.terminating_s = float("inf")
    assert mirrord(kubeconfig, "agent", "uninstall").returncode == 0
    r = mirrord(kubeconfig, *target[:-2], "--agent-startup-timeout", "3", "--", "true")
    assert r.returncode != 0
    assert "namespace mirrord is being deleted (Terminating" in r.stderr, r.stderr
    assert (
        "gave up after agent.startup_timeout (3s) while waiting for namespace mirrord to "
        "finish terminating (`kubectl get ns mirrord -o yaml`)" in r.stderr
    )
    assert "Traceback" not in r.stderr


async def test_port_forward_carries_bytes_and_reports_errors(
    cluster: FakeCluster, kubeconfig: Path
) -> None:
    from mirrord.kube.api import KubeApi, KubeSettings
    from mirrord.kube.tunnel import PortForward

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


# The local program of the probes test: the same three servers as the pod, answering "local".
TCP_HELLO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[2].encode() + b"\\n"); c.close()
"""
# The local program's HTTP handler: answers "local" (needs `import http.server`).
LOCAL_HANDLER = """
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "5"); self.end_headers()
        self.wfile.write(b"local")
    def log_message(self, *a):
        pass
"""
LOCAL_HTTP = f"""
import http.server
{LOCAL_HANDLER}
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def _get_from_host(ip: str, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=10) as r:
        return str(r.read().decode())


def _tcp_hello(ip: str, port: int) -> str:
    import socket

    with socket.create_connection((ip, port), timeout=10) as s:
        return s.makefile().readline().strip()


@pytest.mark.parametrize("steal_probes", [False, True], ids=["default", "steal-probes"])
def test_a_steal_leaves_the_pods_probes_to_it(
    cluster: FakeCluster, kubeconfig: Path, tmp_path: Path, steal_probes: bool
) -> None:
    """#13: httpGet, tcpSocket and grpc probes of the target container: their requests from
    the node still get the pod's answers; every other request, from the node or from
    another pod, is stolen; the start-up lines name each probe. --steal-probes takes the
    probes too, with upstream's warning."""
    from tests.features.incoming.h2_helpers import GRPC_SERVER, grpc_client
    from tests.features.incoming.incoming_helpers import mirrord_rules

    cluster.namespace("shop")
    probes = {
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "livenessProbe": {"tcpSocket": {"port": 8081}},
        "startupProbe": {"grpc": {"port": 9090}},
    }
    pod = cluster.add_pod("web-1", "shop", container_spec=probes)
    assert pod is not None
    pod.spawn([PY, "-c", TCP_HELLO, "8081", "pod"])
    pod.spawn([sys.executable, "-c", GRPC_SERVER, "9090", "pod"])
    for port in (8080, 8081, 9090):
        pod.wait_listening(port)
    other = cluster.network.add_pod("other", argv=["/bin/sleep", "600"])
    for name, code in (("web.py", LOCAL_HTTP), ("hello.py", TCP_HELLO), ("rpc.py", GRPC_SERVER)):
        (tmp_path / name).write_text(code)
    local = tmp_path / "local.sh"
    local.write_text(
        f"cd {tmp_path}\n{PY} web.py &\n{PY} hello.py 8081 local &\n"
        f"exec {sys.executable} rpc.py 9090 local\n"
    )
    err = tmp_path / "err"
    proc = start_mirrord(
        kubeconfig, "exec", "-n", "shop", "--target", "pod/web-1", "--steal",
        *(["--steal-probes"] if steal_probes else []), "--", "/bin/sh", str(local), stderr=err,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not all(  # each of the three ports redirected
            any(re.search(rf"mirrord:steal:{port}\b", r) for r in mirrord_rules(pod))
            for port in (8080, 8081, 9090)
        ):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        ip = pod.address
        # From the node (this host): the probes' own requests stay with the pod.
        probe_side = "local" if steal_probes else "pod"
        assert _get_from_host(ip, "/healthz") == probe_side
        assert _get_from_host(ip, "/orders") == "local"
        assert _tcp_hello(ip, 8081) == probe_side
        node_calls = grpc_client(None, ip, 9090, [["health", None], ["hi", None]])
        assert [c["side"] for c in node_calls] == [probe_side, "local"]
        # From another pod: all of it is stolen, the probe paths too.
        get = f"import urllib.request as u; print(u.urlopen('http://{ip}:8080/healthz').read())"
        answers = other.run([PY, "-c", get])
        assert answers.stdout.decode().strip() == "b'local'", answers.stderr
        hello = other.run([PY, "-c", f"import socket; print(socket.create_connection(('{ip}', "
                           "8081)).makefile().readline().strip())"])  # fmt: skip
        assert hello.stdout.decode().strip() == "local", hello.stderr
        pod_calls = grpc_client(other, ip, 9090, [["health", None]])
        assert [c["side"] for c in pod_calls] == ["local"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    said = err.read_text()
    for probe in (
        "readiness probe (GET /healthz on port 8080)",
        "liveness probe (TCP connect on port 8081)",
        "startup probe (gRPC health check on port 9090)",
    ):
        if steal_probes:
            assert (
                f"--steal-probes: the steal of port {probe[-5:-1]} takes the pod's {probe}" in said
            )
        else:
            assert f"left to the pod: its {probe}" in said, said
    assert mirrord_rules(pod) == []


async def test_install_reads_again_when_the_controller_updated_the_daemonset(
    apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    """The DaemonSet controller bumps the resourceVersion with each status update: a
    replace that meets one (409) reads the object again instead of failing the install."""
    from mirrord.kube import install as inst
    from mirrord.kube.api import KubeApi, KubeSettings

    api = await KubeApi.connect(KubeSettings(kubeconfig=str(kubeconfig)), {})
    try:
        await inst.install(api, AgentConfig())
        real_get = api.get
        bumps = []

        async def get_then_controller_writes(res, name, ns=None):  # type: ignore[no-untyped-def]
            got = await real_get(res, name, ns)
            if res.kind == "DaemonSet" and len(bumps) < 2:
                bumps.append(name)  # between our read and our write, twice
                apiserver.update_status("DaemonSet", name, ns, {"numberReady": len(bumps)})
            return got

        api.get = get_then_controller_writes  # type: ignore[method-assign]
        done = await inst.install(api, AgentConfig())
        assert "updated DaemonSet mirrord/mirrord-agent" in done
        assert len(bumps) == 2
    finally:
        await api.close()


def test_a_node_selector_no_node_matches_is_said(cluster: FakeCluster, kubeconfig: Path) -> None:
    """#18: agent.node_selector that matches no node: the DaemonSet controller schedules
    nothing and records no event; exec and agent status say so, with the selector."""
    cluster.add_pod("solo", "shop")
    config = kubeconfig.parent / "mirrord.json"
    config.write_text(json.dumps({"agent": {"node_selector": {"pool": "gpu"}}}))
    r = mirrord(kubeconfig, "exec", "-f", str(config), "-n", "shop", "-t", "pod/solo",
                "--agent-startup-timeout", "600", "--", "true")  # fmt: skip
    assert r.returncode != 0
    said = "may run on no node: none matches its node selector (kubernetes.io/os=linux, pool=gpu"
    assert said in r.stderr, r.stderr
    st = mirrord(kubeconfig, "agent", "status", "-f", str(config))
    assert st.returncode == 3 and said in st.stdout, st.stdout
