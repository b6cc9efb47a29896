"""Kubeconfig files without the Kubernetes library: where they are, whether one names a
current context, and what makes one unusable. Light (PyYAML only), so `uses_cluster` and
the CLI can ask before kubernetes_asyncio is imported."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class KubeSettings:
    """Where the cluster is: from the config (`kubeconfig`, `kube_context`) and flags."""

    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 30.0
    # accept_invalid_certificates / -c: the API server's certificate is not verified.
    insecure: bool = False


def kubeconfig_paths(settings: KubeSettings, environ: Mapping[str, str]) -> tuple[str, str]:
    """The kubeconfig file list (`:`-separated, as KUBECONFIG) and where it came from."""
    if settings.kubeconfig:
        return os.path.expanduser(settings.kubeconfig), "the kubeconfig setting"
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"], "KUBECONFIG"
    home = environ.get("HOME") or os.path.expanduser("~")
    return str(Path(home) / ".kube" / "config"), "the default location"


# Top-level kubeconfig sections: each a list of {name, <section singular>: {...}}.
_NAMED_LISTS = {"clusters": "cluster", "contexts": "context", "users": "user"}
_STRING_KEYS = frozenset(
    {
        "server", "token", "namespace", "cluster", "user", "username", "password",
        "certificate-authority", "certificate-authority-data", "client-certificate",
        "client-certificate-data", "client-key", "client-key-data", "tokenFile",
    }
)  # fmt: skip


def kubeconfig_problem(path: str) -> str | None:
    """What makes a kubeconfig file unusable, in words (None: its shape is fine). Checked
    before the Kubernetes library reads it: on odd shapes that raises bare TypeErrors."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
    if data is None:
        return "the file is empty"
    if not isinstance(data, dict):
        return f"expected a mapping of settings (apiVersion, clusters, ...), got a {_kind(data)}"
    for section, item in _NAMED_LISTS.items():
        entries = data.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            return f"{section}: expected a list, got a {_kind(entries)}"
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                return f"{section}[{index}]: expected an entry with a name"
            body = entry.get(item)
            if body is not None and not isinstance(body, dict):
                return f"{section}[{index}].{item}: expected a mapping, got a {_kind(body)}"
            for key, value in (body or {}).items():
                if key in _STRING_KEYS and not isinstance(value, str):
                    return f"{section}[{index}].{item}.{key}: expected a string, got {value!r}"
    current = data.get("current-context")
    if current is not None and not isinstance(current, str):
        return f"current-context: expected a name, got {current!r}"
    return None


def _kind(value: object) -> str:
    return {list: "list", dict: "mapping", str: "string", int: "number", float: "number",
            bool: "boolean"}.get(type(value), type(value).__name__)  # fmt: skip


def has_current_context(environ: Mapping[str, str], settings: KubeSettings | None = None) -> bool:
    """Whether a kubeconfig names a current context (or the settings name one): then a
    session without a target runs targetless in that cluster, as upstream's does."""
    settings = settings or KubeSettings()
    paths, _ = kubeconfig_paths(settings, environ)
    existing = [p for p in paths.split(":") if p and os.path.exists(p)]
    if not existing:
        return False
    if settings.context:
        return True
    for path in existing:
        try:
            with open(path, encoding="utf-8-sig") as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return True  # a kubeconfig is there: let the session say what is wrong with it
        if isinstance(data, dict) and data.get("current-context"):
            return True
    return False
