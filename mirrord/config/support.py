"""Which config keys this version acts on, and what it says about the rest.

This is the single place to edit when a feature is built: move its key path into
`IMPLEMENTED`. Paths are dotted; a path covers everything below it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Keys whose settings change what we do.
IMPLEMENTED: frozenset[str] = frozenset(
    {
        "$schema",
        "target",
        "feature.env",
        "feature.fs",
        "feature.hostname",
        "feature.network.outgoing.tcp",
        "feature.network.outgoing.udp",
        "feature.network.outgoing.ignore_localhost",
        "feature.network.outgoing.filter",
        "feature.network.outgoing.unix_streams",
        "feature.network.dns.enabled",
        "feature.network.dns.filter",
        "feature.network.incoming.mode",
        "feature.network.incoming.port_mapping",
        "feature.network.incoming.listen_ports",
        "feature.network.incoming.ignore_localhost",
        "feature.network.incoming.ignore_ports",
        "feature.network.incoming.ports",
        "feature.network.incoming.on_concurrent_steal",
        "feature.network.incoming.http_filter.header_filter",
        "feature.network.incoming.http_filter.path_filter",
        "feature.network.incoming.http_filter.method_filter",
        "feature.network.incoming.http_filter.all_of",
        "feature.network.incoming.http_filter.any_of",
        "feature.network.incoming.http_filter.ports",
        "agent.nftables",
        "agent.startup_timeout",
        "agent.communication_timeout",
        "kube_context",
        "kubeconfig",
        "accept_invalid_certificates",
        # The agent DaemonSet (mirrord/kube/manifests.py) is built from these.
        "agent.namespace",
        "agent.image",
        "agent.image_pull_policy",
        "agent.image_pull_secrets",
        "agent.privileged",
        "agent.tolerations",
        "agent.node_selector",
        "agent.resources",
        "agent.labels",
        "agent.annotations",
        "agent.priority_class",
        "agent.log_level",
        "agent.disable_mesh_sidecar_injection",
    }
)

# Sections whose switch (true/false, or a mode string) we act on even where some keys
# below are not built.
IMPLEMENTED_SWITCHES: frozenset[str] = frozenset(
    {
        "feature.network",
        "feature.network.outgoing",
        "feature.network.dns",
        "feature.network.incoming",
    }
)

# Keys that only upstream's own machinery (operator, IDE plugins, macOS SIP patching, its
# proxies, telemetry) reads. They will never do anything here; say so instead of "not yet".
NO_EFFECT: Mapping[str, str] = {
    "operator": "the mirrord operator is not used",
    "multi_cluster": "the mirrord operator is not used",
    "profile": "the mirrord operator is not used",
    "key": "the mirrord operator is not used",
    "baggage": "the mirrord operator is not used",
    "traceparent": "the mirrord operator is not used",
    "feature.copy_target": "an operator feature upstream; the mirrord operator is not used",
    "feature.db_branches": "an operator feature upstream; the mirrord operator is not used",
    "feature.preview": "an operator feature upstream; the mirrord operator is not used",
    "feature.split_queues": "an operator feature upstream; the mirrord operator is not used",
    "telemetry": "no telemetry is ever sent",
    "api": "there is no session monitor API",
    "ci": "there is no `mirrord ci` mode",
    "sip_binaries": "macOS SIP patching does not apply (Linux ptrace)",
    "skip_sip": "macOS SIP patching does not apply (Linux ptrace)",
    "container": "`mirrord container` is not provided",
    "internal_proxy": "there is no separate internal proxy process",
    "external_proxy": "there is no external proxy process",
    "use_proxy": "HTTP(S)_PROXY handling of upstream's CLI does not apply",
    "experimental": "upstream's experimental switches target its LD_PRELOAD layer",
    "agent.ttl": "the agent is a DaemonSet (or a local process) that outlives sessions",
    "agent.ephemeral": "the agent runs as a DaemonSet, not in an ephemeral container",
    "agent.exclude_from_mesh": (
        "the agent runs as a DaemonSet, not in the target's pod: it has no port there for a "
        "mesh's sidecar to capture (steal and mirror take the sidecar's plaintext hop)"
    ),
    "feature.env.load_from_process": "the environment is always fetched before start",
    "feature.fs.readonly_file_buffer": "remote files are read from a local copy at native speed",
}

# Keys upstream once had and old configs still carry. Accepted, ignored, and reported.
DEPRECATED: Mapping[str, str] = {
    "pause": "the pause feature was removed",
    "connect_tcp": "no longer an upstream setting",
    "agent.pause": "the pause feature was removed",
    "agent.network_interface": "the agent finds the interface itself",
    "feature.network.incoming.http_header_filter": (
        "replaced upstream by feature.network.incoming.http_filter.header_filter"
    ),
    "experimental.vfork_emulation": "no longer an upstream setting",
    "experimental.readlink": "readlink is always handled",
}

# Containers whose children are independent settings: warn per child, not for the whole.
_GROUPS: frozenset[str] = frozenset({"", "feature", "feature.network", "agent"})


def _covered(path: str, table: Mapping[str, str] | frozenset[str]) -> str | None:
    """The entry of `table` equal to `path` or above it, if any."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in table:
            return candidate
    return None


def _leads_to(path: str, table: Mapping[str, str] | frozenset[str]) -> bool:
    """Whether some entry of `table` lies strictly below `path`."""
    prefix = f"{path}." if path else ""
    return any(entry.startswith(prefix) and entry != path for entry in table)


def is_implemented(path: str) -> bool:
    """Whether a dotted key path is acted on by this version."""
    return (
        _covered(path, IMPLEMENTED) is not None
        and _covered(path, NO_EFFECT) is None
        and _covered(path, DEPRECATED) is None
    )


def support_warnings(raw: Mapping[str, Any]) -> list[str]:
    """Warnings for every key the user set that this version does not act on."""
    return list(_walk(raw, ""))


def _walk(node: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for key, value in node.items():
        # null means "use the default", which is what we do anyway.
        if value is not None:
            yield from _judge(f"{prefix}.{key}" if prefix else str(key), value)


def _special_below(path: str, value: Any) -> bool:
    return isinstance(value, Mapping) and (
        _leads_to(path, DEPRECATED) or _leads_to(path, NO_EFFECT)
    )


def _judge(path: str, value: Any) -> Iterator[str]:
    if path in DEPRECATED:
        yield f"{path}: deprecated upstream, accepted and ignored ({DEPRECATED[path]})"
        return
    if path in NO_EFFECT:
        plain = value
        if isinstance(value, Mapping) and _leads_to(path, DEPRECATED):
            # Name deprecated keys inside a no-effect section: they may confuse elsewhere.
            plain = {}
            for key, child in value.items():
                if f"{path}.{key}" in DEPRECATED and child is not None:
                    yield from _judge(f"{path}.{key}", child)
                elif child is not None:
                    plain[key] = child
        if plain != {}:
            yield f"{path}: has no effect here ({NO_EFFECT[path]}); ignored"
        return
    implemented = _covered(path, IMPLEMENTED) is not None or (
        isinstance(value, (bool, str)) and path in IMPLEMENTED_SWITCHES
    )
    if isinstance(value, Mapping) and (
        path in _GROUPS or (not implemented and _leads_to(path, IMPLEMENTED))
    ):
        yield from _walk(value, path)
        return
    if _special_below(path, value):
        # Deprecated or no-effect children get their own line; the others one line here.
        plain_set = False
        for key, child in value.items():
            child_path = f"{path}.{key}"
            if child is None:
                continue
            if (
                child_path in DEPRECATED
                or child_path in NO_EFFECT
                or _special_below(child_path, child)
            ):
                yield from _judge(child_path, child)
            else:
                plain_set = True
        if plain_set and not implemented:
            yield _unsupported(path)
        return
    if implemented:
        return
    # Turning off a feature we do not have yet changes nothing: no need to warn.
    if path.startswith("feature.") and value is False:
        return
    yield _unsupported(path)


def _unsupported(path: str) -> str:
    return f"{path}: accepted but not supported yet by this version; ignored"
