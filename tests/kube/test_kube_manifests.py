"""Every manifest we emit validates against the Kubernetes schemas (kubernetes-validate,
offline); the agent image's Dockerfile parses and carries what the agent needs."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from mirrord.config.models import AgentConfig
from mirrord.kube import manifests as m

ROOT = Path(__file__).resolve().parents[2]
MIRRORD = str(Path(sys.executable).with_name("mirrord"))
K8S_VERSION = "1.30"

CONFIGS = {
    "default": AgentConfig(),
    "custom": AgentConfig.model_validate({
        "namespace": "tools", "image": {"registry": "reg.example/mirrord-agent", "tag": "t1"},
        "privileged": True, "image_pull_policy": "Always",
        "image_pull_secrets": [{"name": "regcred"}],
        "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes",
                         "effect": "NoSchedule"}],
        "node_selector": {"pool": "dev"}, "priority_class": "system-node-critical",
        "resources": {"requests": {"cpu": "50m", "memory": 128}, "limits": {"memory": "1Gi"}},
        "labels": {"team": "dev"}, "annotations": {"owner": "platform"}, "log_level": "debug",
    }),
}  # fmt: skip


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_install_manifest_validates(name: str) -> None:
    docs = m.install_manifests(CONFIGS[name], "tok")
    assert [d["kind"] for d in docs] == [
        "Namespace", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "DaemonSet",
    ]  # fmt: skip
    for doc in docs:
        validate(doc)


def test_the_daemonset_has_what_the_agent_needs() -> None:
    ds = m.daemonset_manifest(AgentConfig())
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert spec["hostPID"] is True
    assert sorted(c["securityContext"]["capabilities"]["add"]) == sorted(
        ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
    )
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in c["securityContext"]
    assert c["args"][:2] == ["--listen", f"127.0.0.1:{m.AGENT_PORT}"]  # loopback only
    token_env = next(e for e in c["env"] if e["name"] == "MIRRORD_AGENT_TOKEN")
    assert token_env["valueFrom"]["secretKeyRef"] == {"name": m.TOKEN_SECRET, "key": "token"}
    docs = m.install_manifests(AgentConfig(), "S3CRET-value")
    assert [d["kind"] for d in docs if "S3CRET" in json.dumps(d)] == []  # base64 in the Secret
    assert spec["tolerations"] == [{"operator": "Exists"}]
    # iptables-legacy's lock file where the read-only root lets it be made.
    lock = next(e for e in c["env"] if e["name"] == "XTABLES_LOCKFILE")["value"]
    mount = next(v for v in c["volumeMounts"] if v["name"] == "scratch")["mountPath"]
    assert lock.startswith(mount + "/")
    assert {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in spec[
        "volumes"
    ]
    custom = m.daemonset_manifest(CONFIGS["custom"])
    cs = custom["spec"]["template"]["spec"]
    assert cs["containers"][0]["securityContext"]["privileged"] is True
    assert cs["containers"][0]["image"] == "reg.example/mirrord-agent:t1"
    assert cs["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "dev"}
    assert cs["tolerations"][0]["key"] == "gpu"
    assert cs["containers"][0]["resources"]["requests"] == {"cpu": "50m", "memory": "128"}


def test_the_agent_namespace_allows_privileged_pods() -> None:
    """A cluster whose Pod Security default is baseline (or restricted) admits the
    DaemonSet and creates no pod: the agent's namespace says privileged."""
    ns = m.install_manifests(AgentConfig(), "tok")[0]
    assert ns["kind"] == "Namespace"
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


def test_an_invalid_manifest_is_caught() -> None:
    # The validation itself can fail: a DaemonSet without a selector is rejected.
    ds = m.daemonset_manifest(AgentConfig())
    del ds["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ds)


def test_install_dry_run_prints_valid_yaml_and_json() -> None:
    r = subprocess.run([MIRRORD, "agent", "install", "--dry-run", "-o", "yaml"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert docs[-1]["kind"] == "DaemonSet"
    for doc in docs:
        validate(doc)
    argv = [MIRRORD, "agent", "install", "--dry-run", "-o", "json", "-a", "other", "-i", "reg/a:9"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    for doc in listing["items"]:
        validate(doc)
    ds = listing["items"][-1]
    assert ds["metadata"]["namespace"] == "other"
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/a:9"


def _third_party_imports_of_the_agent() -> set[str]:
    code = (
        "import sys, mirrord.agent.main, mirrord.agent.server\n"
        "std = sys.stdlib_module_names\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules} - set(std))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    # grpc_tools: grpcio tries it at import and does without (a dev tool here).
    # typing_extensions: a dependency of grpcio, installed with it.
    ignored = {"mirrord", "_distutils_hack", "grpc_tools", "typing_extensions", "sitecustomize",
               "cython_runtime", "__main__"}  # fmt: skip
    # _cython_*: the runtime module of grpcio's compiled extension.
    return {
        n
        for n in out.split()
        if n not in ignored and not n.startswith(("__editable__", "_cython_"))
    }


def test_the_dockerfile_builds_the_agent_from_the_same_entry_point() -> None:
    parser = DockerfileParser(path=str(ROOT / "agent_image" / "Dockerfile"))
    ins = [(i["instruction"], i["value"]) for i in parser.structure]
    entry = [json.loads(v) for k, v in ins if k == "ENTRYPOINT"]
    assert entry == [m.AGENT_ENTRY]
    assert parser.baseimage.startswith("python:3.11")
    copies = " ".join(v for k, v in ins if k == "COPY")
    for needed in ("pyproject.toml", "README.md", "mirrord"):
        assert needed in copies
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert "iptables" in runs and "nftables" in runs
    # Every third-party module the agent imports is installed, with pyproject's pins.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # hyperframe and hpack come with h2 (its own dependencies).
    dist_of = {"grpc": "grpcio", "google": "protobuf", "h11": "h11", "h2": "h2",
               "hyperframe": "h2", "hpack": "h2"}  # fmt: skip
    for module in _third_party_imports_of_the_agent():
        assert module in dist_of, f"the agent imports {module}: add it to the image"
        pin = next(d for d in deps if d.startswith(dist_of[module]))
        assert f'"{pin}"' in runs, f"the image installs {pin}"
    # The fake cluster starts its agent pods with this same entry point and the DaemonSet's
    # args (tests/kube/fake_cluster.py); test_kube_exec.py runs them.


def test_agent_pods_are_kept_out_of_service_meshes_unless_told() -> None:
    """agent.disable_mesh_sidecar_injection (upstream's default: true): the labels and
    annotations Istio, Linkerd and Kuma read to skip a pod."""
    meta = m.daemonset_manifest(AgentConfig())["spec"]["template"]["metadata"]
    assert meta["labels"]["sidecar.istio.io/inject"] == "false"
    assert meta["annotations"]["linkerd.io/inject"] == "disabled"
    assert meta["annotations"]["kuma.io/sidecar-injection"] == "disabled"
    allowed = AgentConfig.model_validate({"disable_mesh_sidecar_injection": False})
    meta = m.daemonset_manifest(allowed)["spec"]["template"]["metadata"]
    assert "sidecar.istio.io/inject" not in meta["labels"]
    assert not any("inject" in key for key in meta["annotations"])
    # The user's own labels and annotations still win.
    own = AgentConfig.model_validate({"labels": {"sidecar.istio.io/inject": "true"}})
    meta = m.daemonset_manifest(own)["spec"]["template"]["metadata"]
    assert meta["labels"]["sidecar.istio.io/inject"] == "true"
