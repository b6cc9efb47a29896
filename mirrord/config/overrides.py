"""Command-line flags of `mirrord exec`, applied over the file's settings (flags win).

Pure: `apply_overrides` returns a new dict and never touches its input. The flags mirror
upstream's `mirrord exec` options that map onto config keys.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .models import _target_tag


@dataclass(frozen=True)
class ExecOverrides:
    """Flags given on the command line; None/False means "not given"."""

    target: str | None = None  # -t/--target: pod/NAME[/container/C], deployment/NAME, pid/N...
    namespace: str | None = None  # -n/--target-namespace
    env_include: str | None = None  # -s/--override-env-vars-include, `;`-separated
    env_exclude: str | None = None  # -x/--override-env-vars-exclude, `;`-separated
    env_file: str | None = None  # --env-file
    fs_mode: str | None = None  # --fs-mode local|localwithoverrides|read|write
    steal: bool = False  # --steal
    no_outgoing: bool = False  # --no-outgoing
    no_tcp_outgoing: bool = False  # --no-tcp-outgoing
    no_udp_outgoing: bool = False  # --no-udp-outgoing
    no_remote_dns: bool = False  # --no-remote-dns
    agent_namespace: str | None = None  # -a/--agent-namespace
    agent_image: str | None = None  # -i/--agent-image
    agent_log_level: str | None = None  # -l/--agent-log-level
    agent_ttl: int | None = None  # --agent-ttl
    agent_startup_timeout: int | None = None  # --agent-startup-timeout
    ephemeral_container: bool = False  # --ephemeral-container
    accept_invalid_certificates: bool | None = None  # -c/--accept-invalid-certificates
    kube_context: str | None = None  # --context
    kubeconfig: str | None = None  # --kubeconfig

    def is_empty(self) -> bool:
        """Whether no flag was given."""
        return self == ExecOverrides()


def _section(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """`parent[key]` as a dict, turning a bool/None/shorthand into an object first."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = {}
        parent[key] = value
    return value


def _feature_toggle(parent: dict[str, Any], key: str) -> dict[str, Any]:
    # A flag about a feature implies the feature is on: `false`/`true` become `{}`.
    return _section(parent, key)


def apply_overrides(raw: Mapping[str, Any], flags: ExecOverrides) -> dict[str, Any]:
    """A copy of `raw` with the flags applied; flags win over the file."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    if flags.target is not None or flags.namespace is not None:
        target = out.get("target")
        # Normalize the shorthand forms to {path, namespace} before changing one part.
        if not isinstance(target, dict) or _target_tag(target) is not None:
            target = {"path": target} if target is not None else {}
        out["target"] = target
        if flags.target is not None:
            target["path"] = flags.target
        if flags.namespace is not None:
            target["namespace"] = flags.namespace
    feature = _section(out, "feature") if _touches_feature(flags) else None
    if feature is not None:
        if flags.env_include is not None or flags.env_exclude is not None or flags.env_file:
            env = _feature_toggle(feature, "env")
            if flags.env_include is not None:
                env["include"] = flags.env_include
                env.pop("exclude", None)
            if flags.env_exclude is not None:
                env["exclude"] = flags.env_exclude
                env.pop("include", None)
            if flags.env_file:
                env["env_file"] = flags.env_file
        if flags.fs_mode is not None:
            fs = feature.get("fs")
            if isinstance(fs, dict):
                fs["mode"] = flags.fs_mode
            else:
                feature["fs"] = flags.fs_mode
        if flags.steal or flags.no_outgoing or flags.no_tcp_outgoing or flags.no_udp_outgoing:
            network = _feature_toggle(feature, "network")
            if flags.steal:
                incoming = network.get("incoming")
                if isinstance(incoming, dict):
                    incoming["mode"] = "steal"
                else:
                    network["incoming"] = "steal"
            if flags.no_outgoing:
                network["outgoing"] = False
            elif flags.no_tcp_outgoing or flags.no_udp_outgoing:
                outgoing = _feature_toggle(network, "outgoing")
                if flags.no_tcp_outgoing:
                    outgoing["tcp"] = False
                if flags.no_udp_outgoing:
                    outgoing["udp"] = False
        if flags.no_remote_dns:
            network = _feature_toggle(feature, "network")
            network["dns"] = False
    agent_values: dict[str, Any] = {
        "namespace": flags.agent_namespace,
        "image": flags.agent_image,
        "log_level": flags.agent_log_level,
        "ttl": flags.agent_ttl,
        "startup_timeout": flags.agent_startup_timeout,
        "ephemeral": True if flags.ephemeral_container else None,
    }
    if any(value is not None for value in agent_values.values()):
        agent = _section(out, "agent")
        agent.update({k: v for k, v in agent_values.items() if v is not None})
    if flags.accept_invalid_certificates is not None:
        out["accept_invalid_certificates"] = flags.accept_invalid_certificates
    if flags.kube_context is not None:
        out["kube_context"] = flags.kube_context
    if flags.kubeconfig is not None:
        out["kubeconfig"] = flags.kubeconfig
    return out


def _touches_feature(flags: ExecOverrides) -> bool:
    return any(
        (
            flags.env_include is not None,
            flags.env_exclude is not None,
            bool(flags.env_file),
            flags.fs_mode is not None,
            flags.steal,
            flags.no_outgoing,
            flags.no_tcp_outgoing,
            flags.no_udp_outgoing,
            flags.no_remote_dns,
        )
    )
