"""Ownership records for test-pod resources, so leftovers of a killed run can be swept.

Every Network and Pod writes a JSON record under STATE_DIR *before* it creates anything
(an intent log), naming the owner process (pid + start time, so a reused pid does not look
alive) and every resource it will create. ``close()`` deletes the record last. A record whose
owner is dead therefore describes exactly what a SIGKILLed run left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_DIR = Path("/run/mirrord-testpod")
NETNS_PREFIX = "mrdt-"
LINK_PREFIXES = ("mrdv-", "mrdb-")
ETC_NETNS = Path("/etc/netns")

_lock = threading.RLock()
_lock_depth = 0
_lock_fd: int | None = None


@contextlib.contextmanager
def global_lock() -> Iterator[None]:
    """Machine-wide lock (flock) for subnet allocation, mount-point refcounts and sweeping.

    Re-entrant within the process: the SIGTERM cleanup may run while the interrupted code
    holds it, and must not deadlock on its own lock.
    """
    global _lock_depth, _lock_fd
    with _lock:
        if _lock_depth == 0:
            STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            _lock_fd = os.open(STATE_DIR / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(_lock_fd, fcntl.LOCK_EX)
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if _lock_depth == 0 and _lock_fd is not None:
                os.close(_lock_fd)  # closing releases the flock
                _lock_fd = None


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, start_time: int) -> bool:
    return proc_start_time(pid) == start_time


def me() -> dict[str, int]:
    pid = os.getpid()
    st = proc_start_time(pid)
    assert st is not None
    return {"pid": pid, "start": st}


def write_record(name: str, record: dict[str, Any]) -> None:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = STATE_DIR / f".{name}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(STATE_DIR / f"{name}.json")  # atomic: a sweep never reads half a record


def remove_record(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{name}.json").unlink()


def read_records() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not STATE_DIR.is_dir():
        return out
    for p in STATE_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out[p.stem] = json.loads(p.read_text())
    return out


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_namespaces(ns_inodes: dict[str, int]) -> list[int]:
    """Pids of processes whose mnt, uts or net namespace is one of the given ones."""
    own = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        for kind in ("mnt", "uts", "net"):
            ino = ns_inodes.get(kind)
            if ino is not None and ns_inode(f"/proc/{entry}/ns/{kind}") == ino:
                found.append(int(entry))
                break
    return found


def kill_and_wait(pids: list[int], timeout: float = 2.0) -> None:
    import time

    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own children; others are reaped by init
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("gone", "Z", "X"):
                pending.discard(pid)
        if pending:
            time.sleep(0.002)


def run_ip(*args: str, stdin: str | None = None, check: bool = True) -> None:
    res = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def delete_link(name: str) -> None:
    if link_exists(name):
        run_ip("link", "del", name, check=False)


def delete_netns(name: str) -> None:
    if Path(f"/run/netns/{name}").exists():
        run_ip("netns", "del", name, check=False)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    with global_lock(), contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only succeeds when no other netns has files there


def remove_host_paths(paths: list[str], still_used: set[str]) -> None:
    """Remove empty mount points we created on the host, unless another live pod uses them."""
    for p in sorted(paths, key=len, reverse=True):
        if p in still_used:
            continue
        path = Path(p)
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only if empty: never delete content
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()


def host_paths_in_use(exclude: str) -> set[str]:
    used: set[str] = set()
    for name, rec in read_records().items():
        if name == exclude:
            continue
        owner = rec.get("owner", {})
        if alive(int(owner.get("pid", 0)), int(owner.get("start", -1))):
            used.update(rec.get("host_paths", []))
    return used


def cgroup2_root() -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise RuntimeError("no cgroup v2 hierarchy is mounted (needed for container IDs)")


def cgroup_pids(path: str) -> list[int]:
    try:
        return [int(x) for x in Path(path, "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroups(paths: list[str]) -> None:
    """Remove cgroup directories we created, deepest first. A shared parent still in use by
    another pod stays (rmdir fails on a non-empty cgroup)."""
    for p in sorted(paths, key=len, reverse=True):
        if not os.path.isdir(p):
            continue
        root = cgroup2_root()
        for pid in cgroup_pids(p):  # normally none: the pod's processes are dead by now
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            os.rmdir(p)


def cleanup_record(name: str, rec: dict[str, Any]) -> None:
    """Remove everything a record names. Safe on partial or already-removed resources."""
    procs = [int(p["pid"]) for p in rec.get("procs", []) if alive(int(p["pid"]), int(p["start"]))]
    ns = {k: int(v) for k, v in rec.get("ns", {}).items()}
    if rec.get("netns"):
        # The owner is dead: whatever still runs in its pod's netns is a leftover, including
        # processes started before their namespaces could be recorded.
        net = ns_inode(f"/run/netns/{rec['netns']}")
        if net is not None:
            ns["net"] = net
    in_cgroups = {pid for cg in rec.get("cgroups", []) for pid in cgroup_pids(cg)}
    kill_and_wait(sorted(set(procs) | set(pids_in_namespaces(ns)) | in_cgroups))
    remove_cgroups(list(rec.get("cgroups", [])))
    for link in rec.get("links", []):
        delete_link(link)
    if rec.get("netns"):
        delete_netns(str(rec["netns"]))
    if rec.get("host_paths"):
        with global_lock():
            remove_host_paths(list(rec["host_paths"]), host_paths_in_use(name))
    if rec.get("dir"):
        shutil.rmtree(str(rec["dir"]), ignore_errors=True)
    remove_record(name)


def sweep_stale() -> list[str]:
    """Remove resources of test pods/networks whose owner process is dead.

    Returns the names of what was removed. Resources of live owners are never touched.
    """
    removed: list[str] = []
    with global_lock():
        # List resources before reading records: a record is always written before its
        # resource exists, so a prefixed resource absent from every record is an orphan.
        netns_names = (
            [n for n in os.listdir("/run/netns") if n.startswith(NETNS_PREFIX)]
            if os.path.isdir("/run/netns")
            else []
        )
        links = [n for n in os.listdir("/sys/class/net") if n.startswith(LINK_PREFIXES)]
        etc_dirs = (
            [n for n in os.listdir(ETC_NETNS) if n.startswith(NETNS_PREFIX)]
            if ETC_NETNS.is_dir()
            else []
        )
        records = read_records()
        known_netns: set[str] = set()
        known_links: set[str] = set()
        # Pods before networks: a bridge goes after the veths attached to it.
        for name, rec in sorted(records.items(), key=lambda kv: kv[1].get("kind") != "pod"):
            known_netns.add(str(rec.get("netns", "")))
            known_links.update(rec.get("links", []))
            owner = rec.get("owner", {})
            if alive(int(owner.get("pid", 0)), int(owner.get("start", -1))):
                continue
            cleanup_record(name, rec)
            removed.append(name)
        for n in netns_names:
            if n not in known_netns:
                delete_netns(n)
                removed.append(n)
        for n in etc_dirs:
            if n not in known_netns:
                shutil.rmtree(ETC_NETNS / n, ignore_errors=True)
        for n in links:
            if n not in known_links:
                delete_link(n)
                removed.append(n)
    return removed
