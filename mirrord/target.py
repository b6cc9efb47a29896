"""Target strings: `pid/N` (a process on this host), a Kubernetes object, or targetless.

Kubernetes targets are `KIND/NAME[/container/C]` as normalized by the config
(`deploy/x` is already `deployment/x`); `mirrord.kube` resolves them to a pod.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBE_KINDS = (
    "pod",
    "deployment",
    "statefulset",
    "replicaset",
    "job",
    "cronjob",
    "rollout",
    "service",
    "labels",
)


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    pid: int | None  # None: targetless, or a Kubernetes target
    kind: str | None = None  # a Kubernetes kind (KUBE_KINDS); None: not Kubernetes
    name: str | None = None
    container: str | None = None

    @property
    def is_kube(self) -> bool:
        return self.kind is not None

    def __str__(self) -> str:
        if self.kind is not None:
            text = f"{self.kind}/{self.name}"
            return f"{text}/container/{self.container}" if self.container else text
        return f"pid/{self.pid}" if self.pid is not None else "targetless"


def parse_target(path: str | None) -> Target:
    if path is None or path in ("", "targetless"):
        return Target(pid=None)
    kind, _, rest = path.partition("/")
    if kind == "pid":
        if not rest.isdigit() or int(rest) <= 0:
            raise TargetError(f"target {path!r}: expected pid/N with N a process id")
        return Target(pid=int(rest))
    if kind in KUBE_KINDS:
        parts = rest.split("/")
        if parts[0] and len(parts) == 1:
            return Target(pid=None, kind=kind, name=parts[0])
        if len(parts) == 3 and parts[0] and parts[1] == "container" and parts[2]:
            return Target(pid=None, kind=kind, name=parts[0], container=parts[2])
        raise TargetError(f"target {path!r}: expected {kind}/NAME[/container/CONTAINER]")
    raise TargetError(
        f"target {path!r}: unknown target kind {kind!r}; expected pid/N, targetless, or "
        + ", ".join(f"{k}/NAME" for k in KUBE_KINDS)
    )
