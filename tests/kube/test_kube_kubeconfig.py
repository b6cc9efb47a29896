"""Kubeconfig files read without the Kubernetes library: shapes, current context, -c."""

from __future__ import annotations

from pathlib import Path

from mirrord.kube.api import KubeApi
from mirrord.kube.kubeconfig import KubeSettings, has_current_context, kubeconfig_problem

GOOD = """apiVersion: v1
current-context: dev
contexts: [{name: dev, context: {cluster: c, user: u, namespace: shop}}]
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
"""


def test_problems_are_named_by_their_place(tmp_path: Path) -> None:
    cases = {
        "": "the file is empty",
        "x: [": "not valid YAML at line 1",
        "[1]": "expected a mapping of settings (apiVersion, clusters, ...), got a list",
        "users: {}": "users: expected a list, got a mapping",
        "contexts: [7]": "contexts[0]: expected an entry with a name",
        "users: [{name: u, user: [1]}]": "users[0].user: expected a mapping, got a list",
        "users: [{name: u, user: {token: 7}}]": "users[0].user.token: expected a string, got 7",
        "current-context: [a]": "current-context: expected a name",
    }
    for text, problem in cases.items():
        path = tmp_path / "k"
        path.write_text(text)
        assert (kubeconfig_problem(str(path)) or "").startswith(problem), text
    path.write_text(GOOD)
    assert kubeconfig_problem(str(path)) is None


def test_a_current_context_means_the_cluster(tmp_path: Path) -> None:
    path = tmp_path / "k"
    env = {"KUBECONFIG": str(path), "HOME": str(tmp_path)}
    assert not has_current_context(env)  # no file
    path.write_text(GOOD.replace("current-context: dev\n", ""))
    assert not has_current_context(env)
    assert has_current_context(env, KubeSettings(context="dev"))
    path.write_text(GOOD)
    assert has_current_context(env)
    home = tmp_path / ".kube"
    home.mkdir()
    (home / "config").write_text(GOOD)
    assert has_current_context({"HOME": str(tmp_path)})


async def test_accept_invalid_certificates_turns_verification_off(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(GOOD)
    env = {"KUBECONFIG": str(path)}
    for insecure in (False, True):
        api = await KubeApi.connect(KubeSettings(insecure=insecure), env)
        try:
            assert api.client.configuration.verify_ssl is (not insecure)
            assert api.namespace == "shop"
        finally:
            await api.close()
