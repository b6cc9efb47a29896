"""Pod entry helper: joins a network namespace, builds the pod's private mounts, execs the target.

Run as a standalone script (``python3 -I -S _enter.py SPEC_JSON_PATH STATUS_FD``), never
imported by the package: it must start fast and must not depend on the caller's environment.
It execs the pod's main program at the end, so the PID the creator sees is the program's PID.

The status fd is close-on-exec: the creator reads ``HOLDER <pid>`` and then EOF when
``execve`` succeeded, or ``ERROR <message>`` when anything before it failed.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# Capability numbers (linux/capability.h), by the names a securityContext uses.
CAPS = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            src.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or 'bind'} {src} on {target}",
    )


def _resolve(prog: str, env: dict[str, str]) -> str:
    if "/" in prog:
        return prog
    # Resolve with the pod's own PATH, as execvp inside the pod would.
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for d in path.split(":"):
        cand = os.path.join(d or ".", prog)
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    raise FileNotFoundError(f"{prog!r} not found in PATH={path}")


def _setup(spec: dict[str, object]) -> None:
    netns_fd = os.open(str(spec["netns_path"]), os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns(net)")
    os.close(netns_fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mnt|uts)")
    # Slave, not shared: nothing we mount here may propagate back to the host.
    _mount("none", "/", None, MS_REC | MS_SLAVE, None)
    # A fresh sysfs shows this netns's interfaces (what `ip netns exec` does too).
    if _libc.umount2(b"/sys", MNT_DETACH) == 0:
        _mount("sysfs", "/sys", "sysfs", 0, None)

    staging = str(spec["staging"])
    _mount("tmpfs", staging, "tmpfs", 0, "mode=0700")
    tree = os.path.join(staging, "tree")
    files = spec["files"]
    assert isinstance(files, dict)
    for path, content_hex in files.items():
        dest = tree + path
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        with open(dest, "wb") as f:
            f.write(bytes.fromhex(content_hex))
        os.chmod(dest, 0o644)
    owners = spec.get("owners") or {}
    assert isinstance(owners, dict)
    for path, (uid, gid, mode) in owners.items():
        os.chown(tree + path, uid, gid)
        os.chmod(tree + path, mode)
    overlays = spec["overlays"]
    assert isinstance(overlays, list)
    for i, root in enumerate(overlays):
        upper = tree + root
        work = os.path.join(staging, f"work{i}")
        os.makedirs(upper, exist_ok=True)
        os.mkdir(work)
        _mount("overlay", root, "overlay", 0, f"lowerdir={root},upperdir={upper},workdir={work}")
    binds = spec["binds"]
    assert isinstance(binds, list)
    for target in binds:
        _mount(tree + target, target, None, MS_BIND | MS_REC, None)
    # The overlays and bind mounts keep the tmpfs alive; the pod need not see the staging dir.
    _check(_libc.umount2(staging.encode(), MNT_DETACH), f"umount {staging}")

    hostname = str(spec["hostname"]).encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")


def _start_holder(status_fd: int) -> None:
    """Start the pod's "pause" process, which keeps its namespaces alive for nsenter.

    Like Kubernetes's pause container: run()/spawn() still work after the main program
    exits. Double fork so it is not the main program's child (init reaps it).
    """
    child = os.fork()
    if child == 0:
        try:
            grandchild = os.fork()
            if grandchild == 0:
                os.setsid()
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execve("/bin/sleep", ["sleep", "infinity"], {})
            os.write(status_fd, f"HOLDER {grandchild}\n".encode())
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _limit_capabilities(keep: list[str]) -> None:
    """Drop every capability not named from the bounding set (and the ambient set): a root
    program then execs with exactly these, as a container runtime starts one."""
    unknown = set(keep) - set(CAPS)
    if unknown:
        raise ValueError(f"unknown capabilities: {sorted(unknown)}")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    for number in range(last + 1):
        if number >= len(CAPS) or CAPS[number] not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop capability {number}")


def main() -> None:
    status_fd = int(sys.argv[2])
    # Close-on-exec from the start: neither the holder nor the main program may keep it open.
    os.set_inheritable(status_fd, False)
    try:
        with open(sys.argv[1]) as f:
            spec = json.load(f)
        _setup(spec)
        _start_holder(status_fd)
        env = {str(k): str(v) for k, v in spec["env"].items()}
        argv = [str(a) for a in spec["argv"]]
        os.chdir(str(spec["cwd"]))
        prog = _resolve(argv[0], env)
        caps = spec.get("capabilities")
        if caps is not None:  # the bounding set only limits what execve gives: setuid still works
            _limit_capabilities([str(c) for c in caps])
        user = spec.get("user")
        if user:
            # Last, after every privileged step (mounts, holder): drop to the pod's user.
            os.setgroups([])
            os.setgid(int(user[1]))
            os.setuid(int(user[0]))
        os.execve(prog, argv, env)
    except BaseException as e:
        os.write(status_fd, f"ERROR {type(e).__name__}: {e}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main()
