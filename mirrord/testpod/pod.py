"""Local "pods" for tests and the demo: a netns + UTS ns + private mount ns + a real process.

Layout (addresses exist only inside namespaces we create and on our own bridge):

    host ── mrdb-XXXXXX (bridge, 10.213.N.1/24) ─┬─ mrdv-AAAAAA ⇄ eth0 in netns mrdt-AAAAAA (.2)
                                                 └─ mrdv-BBBBBB ⇄ eth0 in netns mrdt-BBBBBB (.3)

Pods get no default route: anything not on their /24 is unreachable, so a test can never
send traffic off this machine by mistake.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import posixpath
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

from . import _state
from ._enter import CAPS

SUBNET_PREFIX = "10.213"
DEFAULT_PORT = 8080
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENTER = str(Path(__file__).with_name("_enter.py"))
# Host Python for the helper and the default service; the venv's python is fine too.
_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

# The default service: answers every GET with the body (b"pod"), logs nothing.
_SERVER_CODE = """
import sys, http.server
port, body = int(sys.argv[1]), sys.argv[2].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# Paths whose deepest existing directory must not be overlaid (kernel or runtime file systems).
_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")


class TestPodError(RuntimeError):
    """A pod or network could not be created."""

    __test__ = False  # not a pytest test class, despite the name


def effective_capabilities(pid: int) -> set[str]:
    """A process's effective capabilities, by the names a securityContext uses."""
    with open(f"/proc/{pid}/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return {name for number, name in enumerate(CAPS) if eff >> number & 1}


def http_server_argv(port: int = DEFAULT_PORT, body: str = "pod") -> list[str]:
    """argv of the default service: an HTTP server on `port` answering every GET with `body`."""
    return [_PYTHON, "-I", "-S", "-c", _SERVER_CODE, str(port), body]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            "mirrord.testpod needs root (network/mount/UTS namespaces, veth, bridges)"
        )


# ---------------------------------------------------------------------------- live registry
# Everything created by this process, closed at exit or on SIGTERM/SIGHUP even when no
# context manager unwinds. SIGINT already unwinds via KeyboardInterrupt.

_live: dict[int, Network | Pod] = {}
_live_lock = threading.RLock()
_handlers_installed = False


def _close_all() -> None:
    with _live_lock:
        objs = list(_live.values())
    # Pods first, then networks (a network's close also closes its pods).
    for obj in sorted(objs, key=lambda o: isinstance(o, Network)):
        if obj._owner_pid == os.getpid():  # a forked child must not tear down its parent's pods
            with contextlib.suppress(Exception):
                obj.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the same signal, as if we had not been here


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Only replace the default action: respect handlers the program set itself.
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


def _register(obj: Network | Pod) -> None:
    _install_handlers()
    with _live_lock:
        _live[id(obj)] = obj


def _unregister(obj: Network | Pod) -> None:
    with _live_lock:
        _live.pop(id(obj), None)


# ---------------------------------------------------------------------------- network


class Network:
    """A bridge with a /24 from 10.213.0.0/16; the host holds .1, pods get .2, .3, ...
    With `ipv6`, also a ULA /64 (fd6d:72:<subnet>::/64): the host ::1, pods ::2, ... as
    `address6` (dual-stack pods)."""

    def __init__(self, ipv6: bool = False) -> None:
        self.ipv6 = ipv6
        _require_root()
        self._owner_pid = os.getpid()
        self.id = secrets.token_hex(3)
        self.bridge = f"mrdb-{self.id}"
        self._record_name = f"net-{self.id}"
        self._pods: list[Pod] = []
        self._next_host = 2
        self._closed = False
        self._lock = threading.Lock()
        _register(self)
        try:
            with _state.global_lock():
                self.subnet_index = self._free_subnet()
                _state.write_record(
                    self._record_name,
                    {
                        "kind": "network",
                        "owner": _state.me(),
                        "links": [self.bridge],
                        "subnet": self.subnet_index,
                    },
                )
            self.host_address = f"{SUBNET_PREFIX}.{self.subnet_index}.1"
            self.prefix_len = 24
            self.host_address6 = self.address6_of(1) if ipv6 else None
            v6 = f"addr add {self.host_address6}/64 dev {self.bridge} nodad\n" if ipv6 else ""
            _state.run_ip(
                "-batch",
                "-",
                stdin=(
                    f"link add {self.bridge} type bridge\n"
                    f"addr add {self.host_address}/24 dev {self.bridge}\n"
                    f"{v6}"
                    f"link set {self.bridge} up\n"
                ),
            )
            # Keep the host's iptables FORWARD chain (br_netfilter) out of pod-to-pod traffic.
            _state.run_ip(
                "link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0", check=False
            )
        except BaseException:
            self.close()
            raise

    def address6_of(self, host: int) -> str:
        return f"fd6d:72:{self.subnet_index}::{host:x}"

    @staticmethod
    def _free_subnet() -> int:
        used: set[int] = set()
        for rec in _state.read_records().values():
            if rec.get("kind") == "network":
                used.add(int(rec["subnet"]))
        # Also avoid subnets someone else configured on this host by hand.
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout
        for word in out.split():
            if word.startswith(f"{SUBNET_PREFIX}."):
                used.add(int(word.split(".")[2]))
        for i in range(1, 255):
            if i not in used:
                return i
        raise TestPodError("no free /24 left in 10.213.0.0/16 (run sweep_stale()?)")

    def _allocate_address(self) -> str:
        with self._lock:
            if self._next_host > 254:
                raise TestPodError(f"network {self.bridge} is full")
            host = self._next_host
            self._next_host += 1
        return f"{SUBNET_PREFIX}.{self.subnet_index}.{host}"

    def add_pod(
        self,
        name: str | None = None,
        *,
        hostname: str | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        hosts_entries: Mapping[str, str] | None = None,
        resolv_conf: str | None = None,
        nameserver: str | None = None,
        argv: Sequence[str] | None = None,
        port: int = DEFAULT_PORT,
        wait_port: int | None = None,
        cwd: str = "/",
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        container_id: str | None = None,
        user: tuple[int, int] | None = None,
        capabilities: Sequence[str] | None = None,
        owners: Mapping[str, tuple[int, int, int]] | None = None,
    ) -> Pod:
        """Create a pod on this network; see `Pod` for the arguments."""
        if self._closed:
            raise TestPodError("network is closed")
        pod = Pod(
            self,
            name=name,
            hostname=hostname,
            env=env,
            files=files,
            hosts_entries=hosts_entries,
            resolv_conf=resolv_conf,
            nameserver=nameserver,
            argv=argv,
            port=port,
            wait_port=wait_port,
            cwd=cwd,
            stdin=stdin,
            container_id=container_id,
            user=user,
            capabilities=capabilities,
            owners=owners,
        )
        self._pods.append(pod)
        return pod

    @property
    def pods(self) -> list[Pod]:
        return [p for p in self._pods if not p.closed]

    def close(self) -> None:
        """Close every pod, then remove the bridge and the record. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for pod in self._pods:
            try:
                pod.close()
            except Exception as e:  # keep tearing down the rest
                errors.append(e)
        _state.delete_link(self.bridge)
        _state.remove_record(self._record_name)
        _unregister(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------- pod


class Pod:
    """A pod: netns + UTS ns + private mount ns, and a main process with exactly `env`.

    Arguments (all optional):
      name          logical pod name (default ``pod-<id>``); hostname defaults to it.
      env           the main process's complete environment (default empty).
      files         ``{absolute path: content}`` visible only inside the pod.
      hosts_entries extra ``/etc/hosts`` lines, ``{hostname: address}``.
      resolv_conf   full ``/etc/resolv.conf`` text; else ``nameserver <nameserver or address>``.
      argv          the main program (default: HTTP server on `port` answering "pod").
      wait_port     TCP port to wait for (LISTEN in the pod) before returning; defaults to
                    `port` for the default service, none for a custom argv.
      user          (uid, gid) the main program runs as (no supplementary groups); default
                    root. The pod's files stay root's (see `owners`); run()/spawn() still
                    run as root.
      capabilities  the main program's capability bounding set, by name ("NET_ADMIN", as a
                    container's securityContext says them); as root it then has exactly
                    these. Default: all, as root has.
      owners        ``{path: (uid, gid, mode)}`` for paths of `files` (or their
                    directories), applied inside the pod.
      container_id  64 hex digits: the main process is moved into a real cgroup v2
                    `.../cri-containerd-<id>.scope`, so /proc/PID/cgroup names the container
                    as on a Kubernetes node (the agent finds the PID by it).
    """

    def __init__(
        self,
        network: Network,
        *,
        name: str | None = None,
        hostname: str | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        hosts_entries: Mapping[str, str] | None = None,
        resolv_conf: str | None = None,
        nameserver: str | None = None,
        argv: Sequence[str] | None = None,
        port: int = DEFAULT_PORT,
        wait_port: int | None = None,
        cwd: str = "/",
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        own_network: bool = False,
        container_id: str | None = None,
        user: tuple[int, int] | None = None,
        capabilities: Sequence[str] | None = None,
        owners: Mapping[str, tuple[int, int, int]] | None = None,
    ) -> None:
        _require_root()
        self._owner_pid = os.getpid()
        self.network = network
        self._own_network = own_network
        self.id = secrets.token_hex(3)
        self.name = name or f"pod-{self.id}"
        self.hostname = hostname or self.name
        self.netns = f"{_state.NETNS_PREFIX}{self.id}"
        self.veth = f"mrdv-{self.id}"
        self.port = port
        self.env: dict[str, str] = dict(env or {})
        self.closed = False
        self._record_name = f"pod-{self.id}"
        self._dir = _state.STATE_DIR / self._record_name
        self._record: dict[str, Any] = {}
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._main: subprocess.Popen[bytes] | None = None
        self.main_pid = 0
        # The pod's "pause" process: holds its namespaces for run()/spawn() (see _enter.py).
        self.holder_pid = 0
        self.address = network._allocate_address()
        # nodad: usable at once (duplicate address detection would hold it ~1 s)
        self.address6 = (
            network.address6_of(int(self.address.rsplit(".", 1)[1])) if network.ipv6 else None
        )
        self.container_id = container_id
        self.cgroup: str | None = None

        if argv is None:
            argv = http_server_argv(port)
            if wait_port is None:
                wait_port = port
        self.argv = list(argv)
        all_files = self._default_files(hosts_entries, resolv_conf, nameserver)
        for path, content in (files or {}).items():
            all_files[_check_path(path)] = content.encode() if isinstance(content, str) else content
        overlays, binds, host_paths = _plan_mounts(list(all_files))

        _register(self)
        try:
            self._record = {
                "kind": "pod",
                "owner": _state.me(),
                "netns": self.netns,
                "links": [self.veth],
                "dir": str(self._dir),
                "host_paths": [],
                "procs": [],
                "ns": {},
                "cgroups": [],
            }
            cgroups = self._plan_cgroup(container_id)
            with _state.global_lock():
                # Record the mount points before creating them, so a sweep can find them.
                self._record["host_paths"] = host_paths
                self._record["cgroups"] = cgroups
                _state.write_record(self._record_name, self._record)
                for hp, is_dir in _host_paths_kinds(host_paths, all_files):
                    if is_dir:
                        os.mkdir(hp, 0o755)
                    else:
                        Path(hp).touch(0o644)
            self._dir.mkdir(mode=0o700)
            (self._dir / "stage").mkdir()
            self._setup_network(all_files)
            self._start_main(
                cwd, stdin, overlays, binds, all_files, user, capabilities, dict(owners or {})
            )
            if cgroups:
                self._enter_cgroup(cgroups)
            if wait_port is not None:
                self.wait_listening(wait_port)
        except BaseException:
            self.close()
            raise

    # -- construction helpers

    def _plan_cgroup(self, container_id: str | None) -> list[str]:
        """The cgroup directories for `container_id`, outermost first (systemd-driver layout,
        under a prefix of ours so nothing else's cgroups are touched)."""
        if container_id is None:
            return []
        if len(container_id) != 64 or any(c not in "0123456789abcdef" for c in container_id):
            raise TestPodError(f"container_id must be 64 lower-case hex digits: {container_id!r}")
        top = _state.cgroup2_root() / f"{_state.NETNS_PREFIX}kubepods.slice"
        pod = top / f"{_state.NETNS_PREFIX}kubepods-pod{self.id}.slice"
        return [str(top), str(pod), str(pod / f"cri-containerd-{container_id}.scope")]

    def _enter_cgroup(self, cgroups: list[str]) -> None:
        for path in cgroups:
            os.makedirs(path, exist_ok=True)
        self.cgroup = cgroups[-1]
        Path(self.cgroup, "cgroup.procs").write_text(str(self.main_pid))

    def _default_files(
        self,
        hosts_entries: Mapping[str, str] | None,
        resolv_conf: str | None,
        nameserver: str | None,
    ) -> dict[str, bytes]:
        hosts = (
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{self.address}\t{self.hostname}\n"
        )
        for host, addr in (hosts_entries or {}).items():
            hosts += f"{addr}\t{host}\n"
        if resolv_conf is None:
            resolv_conf = f"nameserver {nameserver or self.address}\n"
        return {
            "/etc/hostname": f"{self.hostname}\n".encode(),
            "/etc/hosts": hosts.encode(),
            "/etc/resolv.conf": resolv_conf.encode(),
        }

    def _setup_network(self, files: Mapping[str, bytes]) -> None:
        # /etc/netns/NAME/* is what `ip netns exec NAME` bind-mounts over /etc for other tools.
        etc = _state.ETC_NETNS / self.netns
        with _state.global_lock():  # /etc/netns itself is removed again when empty
            etc.mkdir(parents=True, exist_ok=True)
        for base in ("hosts", "resolv.conf", "hostname"):
            (etc / base).write_bytes(files[f"/etc/{base}"])
        _state.run_ip(
            "-batch",
            "-",
            stdin=(
                f"netns add {self.netns}\n"
                f"link add {self.veth} type veth peer name eth0 netns {self.netns}\n"
                f"link set {self.veth} master {self.network.bridge} up\n"
            ),
        )
        _state.run_ip(
            "-n",
            self.netns,
            "-batch",
            "-",
            stdin=(
                f"addr add {self.address}/{self.network.prefix_len} dev eth0\n"
                + (f"addr add {self.address6}/64 dev eth0 nodad\n" if self.address6 else "")
                + "link set lo up\n"
                + "link set eth0 up\n"
            ),
        )

    def _start_main(
        self,
        cwd: str,
        stdin: int | IO[Any] | None,
        overlays: list[str],
        binds: list[str],
        files: Mapping[str, bytes],
        user: tuple[int, int] | None = None,
        capabilities: Sequence[str] | None = None,
        owners: Mapping[str, tuple[int, int, int]] | None = None,
    ) -> None:
        for path in owners or {}:
            if not any(f == path or f.startswith(path.rstrip("/") + "/") for f in files):
                raise TestPodError(f"owners: {path} is not one of the pod's files or their dirs")
        spec = {
            "user": list(user) if user is not None else None,
            "capabilities": [c.upper() for c in capabilities] if capabilities is not None else None,
            "owners": {p: list(o) for p, o in (owners or {}).items()},
            "netns_path": f"/run/netns/{self.netns}",
            "hostname": self.hostname,
            "staging": str(self._dir / "stage"),
            "files": {p: c.hex() for p, c in files.items()},
            "overlays": overlays,
            "binds": binds,
            "env": self.env,
            "argv": self.argv,
            "cwd": cwd,
        }
        spec_path = self._dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        self.log_path = self._dir / "main.log"
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            with open(self.log_path, "wb") as log:
                self._main = subprocess.Popen(
                    [_PYTHON, "-I", "-S", _ENTER, str(spec_path), str(wfd)],
                    env={"PATH": DEFAULT_PATH},
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(wfd,),
                    start_new_session=True,  # terminal signals to the test don't hit the pod
                )
            self.main_pid = self._main.pid
            # Record the pid at once, before the helper even finishes.
            self._record_proc(self.main_pid)
            os.close(wfd)
            wfd = -1
            msg = b""
            while chunk := os.read(rfd, 4096):  # EOF = execve succeeded (fd is close-on-exec)
                msg += chunk
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        for line in msg.decode(errors="replace").splitlines():
            if line.startswith("HOLDER "):
                self.holder_pid = int(line.split()[1])
                self._record_proc(self.holder_pid)
        if "ERROR " in msg.decode(errors="replace") or not self.holder_pid:
            raise TestPodError(f"pod {self.name}: entering namespaces failed: {msg.decode()}")
        spec_path.unlink()
        # The pid we hand out must be the program itself, already inside the pod's netns.
        main_net = _state.ns_inode(f"/proc/{self.main_pid}/ns/net")
        pod_net = _state.ns_inode(f"/run/netns/{self.netns}")
        if main_net is not None and self._main.poll() is None and main_net != pod_net:
            raise TestPodError(f"pod {self.name}: main pid {self.main_pid} is not in the pod netns")
        self._record["ns"] = {
            k: os.stat(f"/proc/{self.holder_pid}/ns/{k}").st_ino for k in ("mnt", "uts")
        }
        _state.write_record(self._record_name, self._record)

    def _record_proc(self, pid: int) -> None:
        start = _state.proc_start_time(pid)
        if start is None:
            return
        self._record["procs"].append({"pid": pid, "start": start})
        _state.write_record(self._record_name, self._record)

    # -- public API

    @property
    def url(self) -> str:
        """URL of the default HTTP service, reachable from the host and from other pods."""
        return f"http://{self.address}:{self.port}/"

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """Wait until something in the pod listens on TCP `port` (read from /proc/PID/net)."""
        deadline = time.monotonic() + timeout
        want = f":{port:04X} "
        while True:
            if self._main is not None and self._main.poll() is not None:
                raise TestPodError(
                    f"pod {self.name}: main process exited with {self._main.returncode}: "
                    f"{self.read_log()[-2000:]!r}"
                )
            for table in ("tcp", "tcp6"):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{self.main_pid}/net/{table}").read_text().splitlines():
                        fields = line.split()
                        # local_address is field 1 ("ADDR:PORT"), state field 3 (0A = LISTEN)
                        if (
                            len(fields) > 3
                            and (fields[1] + " ").endswith(want)
                            and fields[3] == "0A"
                        ):
                            return
            if time.monotonic() > deadline:
                raise TestPodError(f"pod {self.name}: nothing listens on port {port}")
            time.sleep(0.002)

    def read_log(self) -> str:
        """What the main process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def _nsenter_argv(self, argv: Sequence[str], cwd: str) -> list[str]:
        if self.closed or self.holder_pid == 0:
            raise TestPodError(f"pod {self.name} is closed")
        return [
            "nsenter",
            f"--target={self.holder_pid}",
            "--net",
            "--uts",
            "--mount",
            f"--wd={cwd}",
            "--",
            *argv,
        ]

    def _exec_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        if env is not None:
            return dict(env)
        # Like `kubectl exec`: the pod's env, plus a PATH if it has none.
        return {"PATH": DEFAULT_PATH, **self.env}

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        **popen_kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the pod's net, UTS and mount namespaces.

        nsenter execs the program, so the returned Popen's pid is the program's. It is killed
        on close() if still running. `popen_kwargs` go to subprocess.Popen (stdout=..., ...).
        """
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            self._nsenter_argv(argv, cwd), env=self._exec_env(env), **popen_kwargs
        )
        self._spawned.append(proc)
        self._record_proc(proc.pid)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        timeout: float = 30.0,
        input: bytes | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a process inside the pod to completion; stdout and stderr are captured."""
        return subprocess.run(
            self._nsenter_argv(argv, cwd),
            env=self._exec_env(env),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=check,
        )

    def close(self) -> None:
        """Kill the pod's processes and remove its netns, veth, files and record. Idempotent."""
        if self.closed:
            return
        self.closed = True
        ns = self._record.get("ns", {})
        pids = [p.pid for p in self._spawned if p.poll() is None]
        if self._main is not None and self._main.poll() is None:
            pids.append(self._main.pid)
        if self.holder_pid and _state.proc_start_time(self.holder_pid) is not None:
            pids.append(self.holder_pid)  # also found by namespace below, unless it failed early
        cgroups = list(self._record.get("cgroups", []))
        in_cgroups = {pid for cg in cgroups for pid in _state.cgroup_pids(cg)}
        _state.kill_and_wait(sorted(set(pids) | set(_state.pids_in_namespaces(ns)) | in_cgroups))
        for p in [*self._spawned, *([self._main] if self._main else [])]:
            with contextlib.suppress(Exception):
                p.wait(timeout=2)
        _state.remove_cgroups(cgroups)
        # Deleting the host end removes both ends at once; netns deletion alone is lazy.
        _state.delete_link(self.veth)
        _state.delete_netns(self.netns)
        if self._record.get("host_paths"):
            with _state.global_lock():
                _state.remove_host_paths(
                    self._record["host_paths"], _state.host_paths_in_use(self._record_name)
                )
        shutil.rmtree(self._dir, ignore_errors=True)
        _state.remove_record(self._record_name)
        _unregister(self)
        if self._own_network:
            self.network.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Pod(name={self.name!r}, netns={self.netns!r}, address={self.address!r}, "
            f"hostname={self.hostname!r}, main_pid={self.main_pid})"
        )


def create_pod(name: str | None = None, **kwargs: Any) -> Pod:
    """A pod on a private network of its own, removed with the pod (one-shot helper).

    Takes the same keyword arguments as `Network.add_pod`.
    """
    net = Network()
    try:
        pod = Pod(net, name=name, own_network=True, **kwargs)
    except BaseException:
        net.close()
        raise
    net._pods.append(pod)
    return pod


# ---------------------------------------------------------------------------- mount planning


def _check_path(path: str) -> str:
    norm = posixpath.normpath(path)
    if not norm.startswith("/") or norm == "/" or norm.startswith("//"):
        raise ValueError(f"pod file path must be absolute: {path!r}")
    if any(c in norm for c in ",:\n"):  # would break overlayfs's option string
        raise ValueError(f"unsupported character in pod file path: {path!r}")
    if any(norm == r or norm.startswith(r + "/") for r in _FORBIDDEN_ROOTS):
        raise ValueError(f"pod files cannot live under /proc, /sys or /dev: {path!r}")
    return norm


def _submount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # field 5 is the mount point, with spaces etc. octal-escaped
            points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def _plan_mounts(paths: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Decide how each pod file becomes visible only inside the pod.

    - Deepest existing directory D of the file, not "/" and with no mounts below it:
      an overlayfs on D (host content stays visible, pod files on a tmpfs upper layer).
      Nested candidates collapse into the outermost D (avoids stacking overlays).
    - Otherwise (D is "/" or has submounts, which an overlay would hide): bind-mount the
      file, or its first missing ancestor directory, from the staging tmpfs. A missing
      mount point must be created on the host (empty; removed again on close).

    Returns (overlay roots, bind targets, host paths to create).
    """
    mounts = _submount_points()
    overlay_roots: set[str] = set()
    bind_items: list[tuple[str, str]] = []  # (file path, bind target)
    for path in paths:
        d = posixpath.dirname(path)
        while not os.path.isdir(d):
            d = posixpath.dirname(d)
        has_sub = any(m.startswith(d.rstrip("/") + "/") for m in mounts) or d == "/"
        if not has_sub and not os.path.islink(d):
            overlay_roots.add(d)
            continue
        # First path component below d that does not exist (or the file itself).
        rel = posixpath.relpath(path, d).split("/")
        target = posixpath.join(d, rel[0])
        bind_items.append((path, target))
    roots = sorted(overlay_roots)
    collapsed = [r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r)]
    binds = sorted({t for _, t in bind_items})
    host_paths = [t for t in binds if not os.path.lexists(t)]
    return collapsed, binds, host_paths


def _host_paths_kinds(host_paths: list[str], files: Mapping[str, bytes]) -> list[tuple[str, bool]]:
    """(path, is_dir) for each mount point to create: a dir unless it is itself a pod file."""
    return [(p, p not in files) for p in host_paths]


__all__ = [
    "DEFAULT_PORT",
    "Network",
    "Pod",
    "TestPodError",
    "create_pod",
    "effective_capabilities",
    "http_server_argv",
]
