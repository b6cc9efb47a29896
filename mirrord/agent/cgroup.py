"""Find a container's processes from its container ID, by reading /proc/*/cgroup.

The matching is a pure function over the text of a cgroup file so it can be tested with
samples from every runtime. Each line is `hierarchy-id:controllers:path`; the container ID
appears as one path component, in one of these shapes (seen on real nodes):

  cgroupfs driver        .../kubepods/besteffort/pod<uid>/<id>      /docker/<id>
  systemd driver         .../cri-containerd-<id>.scope   .../crio-<id>.scope
                         .../docker-<id>.scope           .../libpod-<id>.scope
  containerd, v1+systemd .../kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>

`crio-conmon-<id>.scope` holds CRI-O's monitor process, which carries the same ID but is
not the container, so it never matches. Paths may be relative to the reader's cgroup
namespace (`/../../pod<uid>/<id>`); matching by component makes that irrelevant.
"""

import os
import re
from collections.abc import Iterable, Mapping

# Scheme prefixes found in Kubernetes pod status (`containerStatuses[].containerID`).
_SCHEMES = ("containerd://", "cri-o://", "docker://", "crio://", "podman://")

# Unit-name prefixes put in front of the ID by the systemd cgroup driver, per runtime.
_UNIT_PREFIXES = ("cri-containerd-", "crio-", "docker-", "libpod-")

_HEX_ID = re.compile(r"^[0-9a-f]{12,128}$")


def normalize_container_id(container_id: str) -> str:
    """Strip a `containerd://`-style scheme and lower-case, so pod status IDs can be used."""
    cid = container_id.strip().lower()
    for scheme in _SCHEMES:
        if cid.startswith(scheme):
            return cid[len(scheme) :]
    return cid


def _ids_in_component(component: str) -> Iterable[str]:
    # v1 + systemd driver joins slice, runtime and ID with ':' inside one component.
    for part in component.split(":"):
        name = part.removesuffix(".scope")
        if name.startswith("crio-conmon-"):
            continue
        for prefix in _UNIT_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if _HEX_ID.match(name):
            yield name


def container_ids_in_cgroup(cgroup_text: str) -> set[str]:
    """Every container ID mentioned in the text of one /proc/PID/cgroup file."""
    found: set[str] = set()
    for line in cgroup_text.splitlines():
        # The path may itself contain ':' (v1 + systemd), so split only twice.
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        for component in fields[2].split("/"):
            found.update(_ids_in_component(component.lower()))
    return found


def cgroup_matches_container(cgroup_text: str, container_id: str) -> bool:
    """Whether a process with this cgroup file belongs to the container (full ID or a prefix
    of at least 12 hex digits, as `docker ps` prints)."""
    wanted = normalize_container_id(container_id)
    if not _HEX_ID.match(wanted):
        return False
    return any(cid.startswith(wanted) for cid in container_ids_in_cgroup(cgroup_text))


def pick_container_root(parents: Mapping[int, int]) -> int | None:
    """Given the matching processes as {pid: ppid}, the container's first process: the one whose
    parent is outside the container (its runtime shim). Lowest PID breaks ties."""
    if not parents:
        return None
    roots = [pid for pid, ppid in parents.items() if ppid not in parents]
    return min(roots or parents)


def _read_ppid(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and ')', so parse from the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else None


def find_container_pid(container_id: str, proc: str = "/proc") -> int | None:
    """Scan `proc` for the container's first process; None when no process matches."""
    matches: dict[int, int] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue  # exited while we scanned, or a kernel thread we may not read
        if cgroup_matches_container(text, container_id):
            ppid = _read_ppid(proc, pid)
            if ppid is not None:
                matches[pid] = ppid
    return pick_container_root(matches)
