"""The target's kubelet probes, as a subscription carries them to the agent (1.3).

Kubernetes targets only: kube/probes.py reads them from the target container's spec.
A steal leaves their requests from the node with the pod (agent/incoming/probes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mirrord.v1 import incoming_pb2

ProbeKind = Literal["tcp", "http", "grpc"]

_KINDS = {
    "tcp": incoming_pb2.INCOMING_PROBE_KIND_TCP,
    "http": incoming_pb2.INCOMING_PROBE_KIND_HTTP,
    "grpc": incoming_pb2.INCOMING_PROBE_KIND_GRPC,
}


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    port: int  # the container's port, named ports resolved
    name: str  # "readiness probe"
    path: str = ""  # http: as kubelet sends it
    note: str = ""  # why it is kept whole (an https httpGet)

    def describe(self) -> str:
        """'readiness probe (GET /healthz on port 8080)'."""
        what = {
            "tcp": "TCP connect",
            "http": f"GET {self.path}",
            "grpc": "gRPC health check",
        }[self.kind]
        note = f", {self.note}" if self.note else ""
        return f"{self.name} ({what} on port {self.port}{note})"

    def to_proto(self) -> incoming_pb2.IncomingProbe:
        return incoming_pb2.IncomingProbe(kind=_KINDS[self.kind], path=self.path, name=self.name)
