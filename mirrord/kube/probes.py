"""The target container's kubelet probes, read from its pod spec (pure: a dict in).

liveness, readiness and startup probes of kind httpGet, tcpSocket and grpc, with named
ports resolved through the container's `ports`. Left out: exec probes (no traffic), an
httpGet with its own `host` (kubelet sends it elsewhere), and a probe whose named port
the container does not declare (kubelet cannot run it either). An https httpGet is kept
as a TCP probe: the agent cannot read its requests, so the node's connections to that
port stay with the pod whole.
"""

from __future__ import annotations

from typing import Any

from mirrord.client.probes import ProbeSpec

PROBES = (
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
)


def _port(value: Any, ports: dict[str, int]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 < value < 65536 else None
    if isinstance(value, str):
        if value.isdigit():
            return _port(int(value), ports)
        return ports.get(value)
    return None


def _one(probe: dict[str, Any], name: str, ports: dict[str, int]) -> ProbeSpec | None:
    if isinstance(http := probe.get("httpGet"), dict):
        port = _port(http.get("port"), ports)
        if port is None or http.get("host"):
            return None
        if str(http.get("scheme") or "HTTP").upper() == "HTTPS":
            return ProbeSpec("tcp", port, name, note="https: all of the node's connections")
        path = str(http.get("path") or "/")
        return ProbeSpec("http", port, name, path if path.startswith("/") else "/" + path)
    if isinstance(tcp := probe.get("tcpSocket"), dict):
        port = _port(tcp.get("port"), ports)
        if port is None or tcp.get("host"):
            return None
        return ProbeSpec("tcp", port, name)
    if isinstance(grpc := probe.get("grpc"), dict):
        port = _port(grpc.get("port"), ports)
        return None if port is None else ProbeSpec("grpc", port, name)
    return None


def probes_of(pod: dict[str, Any], container: str) -> tuple[ProbeSpec, ...]:
    """The probes of `container` in `pod` that send traffic to one of its ports."""
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") != container:
            continue
        ports = {
            str(p["name"]): int(p["containerPort"])
            for p in spec.get("ports") or []
            if p.get("name") and isinstance(p.get("containerPort"), int)
        }
        found = []
        for key, label in PROBES:
            probe = spec.get(key)
            if isinstance(probe, dict) and (one := _one(probe, f"{label} probe", ports)):
                found.append(one)
        return tuple(found)
    return ()
