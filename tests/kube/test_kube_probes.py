"""Reading a target container's kubelet probes from its pod spec (kube/probes.py)."""

from __future__ import annotations

from typing import Any

from mirrord.client.probes import ProbeSpec
from mirrord.kube.probes import probes_of


def pod(**container: Any) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [
                {"name": "sidecar", "livenessProbe": {"tcpSocket": {"port": 15020}}},
                {"name": "app", **container},
            ]
        }
    }


def test_http_tcp_and_grpc_probes_with_named_ports() -> None:
    spec = pod(
        ports=[{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}],
        livenessProbe={"httpGet": {"path": "/livez", "port": "http"}},
        readinessProbe={"tcpSocket": {"port": "admin"}},
        startupProbe={"grpc": {"port": 9090, "service": "app"}},
    )
    assert probes_of(spec, "app") == (
        ProbeSpec("http", 8080, "liveness probe", "/livez"),
        ProbeSpec("tcp", 9000, "readiness probe"),
        ProbeSpec("grpc", 9090, "startup probe"),
    )
    assert probes_of(spec, "sidecar") == (ProbeSpec("tcp", 15020, "liveness probe"),)
    assert probes_of(spec, "nope") == ()


def test_what_kubelet_would_not_send_to_the_pod_is_left_out() -> None:
    spec = pod(
        livenessProbe={"exec": {"command": ["true"]}},
        readinessProbe={"httpGet": {"path": "/r", "port": 80, "host": "10.0.0.9"}},
        startupProbe={"httpGet": {"path": "/s", "port": "undeclared"}},
    )
    assert probes_of(spec, "app") == ()


def test_defaults_https_and_odd_values() -> None:
    spec = pod(
        livenessProbe={"httpGet": {"port": 8080}},  # path defaults to /
        readinessProbe={"httpGet": {"path": "/ready", "port": 8443, "scheme": "HTTPS"}},
        startupProbe={"httpGet": {"path": "start", "port": "8081"}},
    )
    live, ready, start = probes_of(spec, "app")
    assert live == ProbeSpec("http", 8080, "liveness probe", "/")
    assert ready.kind == "tcp" and ready.port == 8443 and "https" in ready.note
    assert start == ProbeSpec("http", 8081, "startup probe", "/start")
    assert probes_of({"spec": {"containers": [{"name": "app", "livenessProbe": 7}]}}, "app") == ()
    assert live.describe() == "liveness probe (GET / on port 8080)"
    assert ready.describe().startswith("readiness probe (TCP connect on port 8443, https")
