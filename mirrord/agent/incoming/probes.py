"""The target's kubelet probes on a stolen port: which of the node's requests stay with the
pod (pure: no I/O).

Kubelet probes a pod from the node, so their source is one of the node's addresses
(node.py). Everything else from the node is taken like any other traffic (NodePort and
LoadBalancer Services with SNAT, ingress controllers on hostNetwork, a curl from the
host). A TCP probe cannot be told from other connections: every connection from the node
to its port stays with the pod. An HTTP probe is a request for its path; a gRPC probe a
call of grpc.health.v1.Health: on connections from the node, those requests go to the pod
and the others to the program, request by request as with an HTTP filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mirrord.agent.incoming.http_filter import Request, RequestFilter

GRPC_HEALTH = "/grpc.health.v1.Health/"
KINDS = ("tcp", "http", "grpc")


@dataclass(frozen=True)
class Probe:
    kind: str  # one of KINDS
    path: str = ""  # http: as kubelet sends it
    name: str = ""  # for logs


def _path_only(target: str) -> str:
    return target.split("?", 1)[0]


@dataclass(frozen=True)
class ProbeSet:
    """The probes of one port."""

    probes: tuple[Probe, ...] = ()

    @property
    def tcp(self) -> bool:
        return any(p.kind == "tcp" for p in self.probes)

    @property
    def requests(self) -> bool:
        """Some probe is told apart request by request (HTTP, gRPC)."""
        return any(p.kind != "tcp" for p in self.probes)

    def keeps(self, request: Request) -> bool:
        """Is this request (from the node) one of the probes'?"""
        target = request.target
        for probe in self.probes:
            if probe.kind == "grpc" and target.startswith(GRPC_HEALTH):
                return True
            if probe.kind == "http" and (
                target == probe.path or _path_only(target) == _path_only(probe.path)
            ):
                return True
        return False

    def describe(self) -> str:
        return ", ".join(p.name or p.kind for p in self.probes)


@dataclass(frozen=True)
class NodeRequests:
    """The filter of a connection from the node: its probes' requests go to the pod, the
    rest as the subscription's own filter says (all of them without one)."""

    probes: ProbeSet
    inner: RequestFilter | None = None

    def matches(self, request: Request) -> bool:
        if self.probes.keeps(request):
            return False
        return self.inner is None or self.inner.matches(request)


def probe_set(probes: Iterable[Probe]) -> ProbeSet:
    """Validated: a kind we know; an HTTP probe's path starts with '/'."""
    checked = []
    for probe in probes:
        if probe.kind not in KINDS:
            raise ValueError(f"unknown probe kind {probe.kind!r}")
        if probe.kind == "http" and not probe.path.startswith("/"):
            raise ValueError(f"an HTTP probe's path must start with '/' (got {probe.path!r})")
        checked.append(probe)
    return ProbeSet(tuple(checked))


NO_PROBES = ProbeSet()
