"""#18: kubeconfig users whose token comes from an exec plugin (EKS `aws eks get-token`,
GKE's gke-gcloud-auth-plugin, kubelogin): short-lived tokens are fetched again — before
they expire when the plugin says when, and after a 401 as kubectl does — for REST calls and
for the port-forward websockets a session opens later."""

from __future__ import annotations

import asyncio
import datetime
import sys
from pathlib import Path

import pytest
import yaml

from mirrord.kube.api import KubeApi, KubeSettings
from mirrord.kube.errors import KubeError
from mirrord.kube.tunnel import PortForward
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster

# The plugin: the token in STATE/token, an expiry from STATE/expiry if there; each run is
# counted in STATE/calls.
PLUGIN = """
import json, pathlib, sys
state = pathlib.Path(sys.argv[1])
with (state / "calls").open("a") as f:
    f.write("x")
status = {"token": (state / "token").read_text()}
if (state / "expiry").exists():
    status["expirationTimestamp"] = (state / "expiry").read_text()
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1",
                  "kind": "ExecCredential", "status": status}))
"""


class Plugin:
    def __init__(self, state: Path, apiserver: FakeApiServer) -> None:
        self.state, self.apiserver = state, apiserver
        state.mkdir()
        (state / "plugin.py").write_text(PLUGIN)
        self.issue(apiserver.token)

    def issue(self, token: str, expires_in: datetime.timedelta | None = None) -> None:
        """What the plugin hands out from now on."""
        (self.state / "token").write_text(token)
        expiry = self.state / "expiry"
        if expires_in is None:
            expiry.unlink(missing_ok=True)
        else:
            when = datetime.datetime.now(datetime.UTC) + expires_in
            expiry.write_text(when.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def rotate(self, token: str, expires_in: datetime.timedelta | None = None) -> None:
        """The API server accepts only `token` now, and the plugin hands it out."""
        self.apiserver.token = token
        self.issue(token, expires_in)

    @property
    def calls(self) -> int:
        path = self.state / "calls"
        return len(path.read_text()) if path.exists() else 0

    def kubeconfig(self, path: Path) -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": self.apiserver.cluster_entry()}],
            "users": [{"name": "dev", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": sys.executable,
                "args": [str(self.state / "plugin.py"), str(self.state)],
                "interactiveMode": "Never",
            }}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "dev"}}],
            "current-context": "fake",
        }  # fmt: skip
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
def plugin(apiserver: FakeApiServer, tmp_path: Path) -> Plugin:
    if apiserver.get("Namespace", "default", "") is None:
        apiserver.put({"kind": "Namespace", "metadata": {"name": "default"}})
    return Plugin(tmp_path / "plugin", apiserver)


def requests_to(apiserver: FakeApiServer, path: str) -> int:
    return sum(1 for _, p in apiserver.requests if p.split("?")[0] == path)


async def test_a_refused_token_is_fetched_again_once(
    plugin: Plugin, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    api = await KubeApi.connect(KubeSettings(kubeconfig=str(plugin.kubeconfig(tmp_path / "k"))), {})
    try:
        ns = "/api/v1/namespaces/default"
        await api.request("GET", ns)
        assert plugin.calls == 1
        plugin.rotate("second")  # no expiry said: kept until refused
        await api.request("GET", ns)
        assert plugin.calls == 2
        await api.request("GET", ns)
        assert plugin.calls == 2  # the new token is kept
        plugin.rotate("third")
        await asyncio.gather(*(api.request("GET", ns) for _ in range(5)))
        assert plugin.calls == 3  # five refusals at once: one run of the plugin
        # A plugin whose new token is refused too: said, not looped on.
        apiserver.token = "fourth"
        with pytest.raises(KubeError, match=r"rejected our credentials \(the exec plugin's new"):
            await api.request("GET", ns)
        assert plugin.calls == 4
    finally:
        await api.close()


async def test_a_token_about_to_expire_is_fetched_before_it_is_refused(
    plugin: Plugin, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    plugin.issue(apiserver.token, datetime.timedelta(hours=1))
    api = await KubeApi.connect(KubeSettings(kubeconfig=str(plugin.kubeconfig(tmp_path / "k"))), {})
    try:
        ns = "/api/v1/namespaces/default"
        await api.request("GET", ns)
        await api.request("GET", ns)
        assert plugin.calls == 1  # an hour left: kept
        plugin.rotate("rotated", datetime.timedelta(hours=1))  # revoked early: refused
        before = requests_to(apiserver, ns)
        await api.request("GET", ns)  # after the 401: fetched again, sent again
        assert (plugin.calls, requests_to(apiserver, ns) - before) == (2, 2)
        # A token that expires within kubernetes-asyncio's 5-minute skew is fetched again
        # before each request: a rotation on the server side is never refused.
        plugin.issue("rotated-soon", datetime.timedelta(minutes=2))
        await api.reauthenticate(api.credentials_generation)  # now holding a short one
        assert plugin.calls == 3
        plugin.rotate("rotated-again", datetime.timedelta(minutes=2))
        before = requests_to(apiserver, ns)
        await api.request("GET", ns)  # expiring: the plugin ran before the request
        assert plugin.calls == 4
        assert requests_to(apiserver, ns) - before == 1  # no 401 first
    finally:
        await api.close()


async def test_a_port_forward_after_the_token_expired(
    plugin: Plugin, cluster: FakeCluster, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    """A session's later websockets (gRPC reconnecting through the tunnel) get a new token."""
    cluster.add_pod("web", "default")  # HTTP on 8080 says "pod"
    api = await KubeApi.connect(KubeSettings(kubeconfig=str(plugin.kubeconfig(tmp_path / "k"))), {})
    forward = PortForward(api, "default", "web", 8080)
    try:
        host, port = (await forward.start()).split(":")

        async def fetch() -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return reply

        assert (await fetch()).endswith(b"pod")
        plugin.rotate("later")
        assert (await fetch()).endswith(b"pod"), forward.errors
        assert plugin.calls == 2
        assert not forward.refused.is_set()
    finally:
        await forward.close()
        await api.close()


def test_exec_with_an_exec_plugin_kubeconfig(
    plugin: Plugin, cluster: FakeCluster, tmp_path: Path
) -> None:
    from tests.kube.test_kube_exec import PRINT_ENV, add_deployment, mirrord, parse

    add_deployment(cluster, "checkout")
    r = mirrord(
        plugin.kubeconfig(tmp_path / "k"),
        "exec", "-n", "shop", "--target", "deployment/checkout", "--", *PRINT_ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout)["APP_MODE"] == "kube"
    assert plugin.calls >= 1
