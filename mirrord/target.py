"""Target strings: `pid/N` (a process on this host) or targetless, for now.

Kubernetes targets (`pod/…`, `deployment/…`) are recognised and refused with a clear
message until the Kubernetes part exists.
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
)


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    pid: int | None  # None: targetless

    def __str__(self) -> str:
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
        raise TargetError(
            f"target {path!r}: Kubernetes targets are not supported by this version yet; "
            "use pid/N (a process on this host) or targetless"
        )
    raise TargetError(
        f"target {path!r}: unknown target kind {kind!r}; expected pid/N, targetless, or "
        + ", ".join(f"{k}/NAME" for k in KUBE_KINDS)
    )
