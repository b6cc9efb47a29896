"""A FAKE one-node cluster for tests: the fake API server plus a fake "kubelet".

- Target pods are real test pods (network namespaces, mirrord.testpod) whose main process
  sits in a real cgroup v2 `cri-containerd-<id>.scope`; the Pod object's status carries
  `containerd://<id>`, so the agent maps it to the PID exactly as on a node.
- Creating the agent DaemonSet starts one agent pod on the node: a test pod running the
  command of the image (ENTRYPOINT parsed from agent_image/Dockerfile, `python` being this
  venv's interpreter) with the DaemonSet's args and env (the token from its Secret). It sees
  the host's /proc, like a `hostPID: true` pod, and listens on its own loopback.
- The kubelet applies a container's securityContext: runAsUser/runAsGroup (the pod's or
  the container's) and its capabilities: containerd's default set, less `drop`, plus
  `add`; `privileged` keeps them all. So the agent really runs with only what its
  manifest gives it, and a target as the user its pod says.
- Port-forward connects to 127.0.0.1:PORT inside the pod's network namespace, as the
  kubelet does.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import datetime
import json
import os
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

from mirrord.testpod import Network, Pod
from tests.kube.fake_apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "agent_image" / "Dockerfile"
NODE = "node-1"
CLONE_NEWNET = 0x40000000
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def image_entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form), with `python` mapped to this venv's interpreter."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    entry = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"][-1]
    argv = list(json.loads(entry))
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def connect_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A TCP connection made from inside a network namespace (the socket keeps it)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:  # a throwaway thread: setns changes only the calling thread
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            sock = socket.create_connection((host, port), timeout=5)
            sock.setblocking(False)
            result.append(sock)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


# Capabilities Pod Security's baseline level allows to be added.
BASELINE_CAPS = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
# What containerd gives a container that asks for no change (its default spec).
RUNTIME_DEFAULT_CAPS = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
]


def container_capabilities(security: dict[str, Any]) -> list[str] | None:
    """The capability set a container starts with (None: all of them, privileged)."""
    if security.get("privileged"):
        return None
    caps = security.get("capabilities") or {}
    drop = {c.upper() for c in caps.get("drop", [])}
    kept = [] if "ALL" in drop else [c for c in RUNTIME_DEFAULT_CAPS if c not in drop]
    return kept + [c.upper() for c in caps.get("add", []) if c.upper() not in kept]


def container_user(pod_spec: dict[str, Any], container: dict[str, Any]) -> tuple[int, int] | None:
    """(uid, gid) from the container's securityContext, else the pod's; None: the image's
    (root here)."""
    merged = {**(pod_spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
    uid = merged.get("runAsUser")
    if uid is None or uid == 0:
        return None
    return int(uid), int(merged.get("runAsGroup", 0))


def _ready_status(pod: Pod, containers: list[str], ids: dict[str, str]) -> dict[str, Any]:
    return {
        "phase": "Running",
        "podIP": pod.address,
        "hostIP": pod.network.host_address,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": c, "ready": True, "containerID": f"containerd://{ids[c]}",
             "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}
            for c in containers
        ],
    }  # fmt: skip


class FakeCluster:
    def __init__(self, api: FakeApiServer, network: Network) -> None:
        self.api = api
        self.network = network
        self.backing: dict[tuple[str, str], Pod] = {}  # (namespace, pod name) → test pod
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Images the node cannot pull: their pods wait in ErrImagePull, as a kubelet's do.
        self.unpullable: set[str] = set()
        # Pod Security Admission's level for namespaces without an enforce label (the
        # cluster's AdmissionConfiguration default; "privileged" lets everything in).
        self.pod_security_default = "privileged"
        api.connect_pod_port = self._connect_pod_port
        api.pod_log = self._pod_log
        api.hooks.append(self._on_event)
        api.put({"kind": "Node", "metadata": {"name": NODE, "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/hostname": NODE}}})  # fmt: skip
        for ns in ("default",):
            api.put({"kind": "Namespace", "metadata": {"name": ns}})

    # -- target pods

    def namespace(self, name: str) -> None:
        self.api.put({"kind": "Namespace", "metadata": {"name": name}})

    def add_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        containers: list[str] | None = None,
        owner: dict[str, str] | None = None,
        ready: bool = True,
        backed: bool = True,
        files: dict[str, bytes] | None = None,
        container_spec: dict[str, Any] | None = None,
        security: dict[str, Any] | None = None,
        owners: dict[str, tuple[int, int, int]] | None = None,
    ) -> Pod | None:
        """A running pod; its first container is a real process (unless backed=False).
        container_spec: more of the first container's spec (ports, probes, securityContext);
        security: the pod's securityContext; owners: (uid, gid, mode) of `files` paths."""
        containers = containers or ["app"]
        ids = {c: secrets.token_hex(32) for c in containers}
        pod = None
        pod_spec = {"securityContext": security or {}}
        first = container_spec or {}
        if backed:
            pod = self.network.add_pod(
                name,
                env=env or {},
                files=files,
                owners=owners,
                container_id=ids[containers[0]],
                user=container_user(pod_spec, first),
                capabilities=container_capabilities(first.get("securityContext") or {}),
            )
            self.backing[(namespace, name)] = pod
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "controller": True,
                                        "uid": "x", **owner}]  # fmt: skip
        spec = {
            "nodeName": NODE,
            **({"securityContext": security} if security else {}),
            "containers": [
                {"name": c, "image": "example/app",
                 "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
                for c in containers
            ],
        }  # fmt: skip
        spec["containers"][0].update(container_spec or {})
        status: dict[str, Any]
        if pod is not None:
            status = _ready_status(pod, containers, ids)
        else:
            status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": [
                          {"name": c, "ready": True, "containerID": f"containerd://{ids[c]}",
                           "state": {"running": {}}} for c in containers]}  # fmt: skip
        if not ready:
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            status["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        self.api.put({"kind": "Pod", "metadata": meta, "spec": spec, "status": status})
        return pod

    # -- the kubelet side

    def _pod_log(self, namespace: str, name: str) -> str | None:
        pod = self.backing.get((namespace, name))
        return pod.read_log() if pod is not None else None

    async def _connect_pod_port(
        self, namespace: str, name: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pod = self.backing.get((namespace, name))
        if pod is None or pod.closed:
            raise OSError(f"pod {name} has no running sandbox")
        sock = await asyncio.get_running_loop().run_in_executor(
            None, connect_in_netns, pod.netns, "127.0.0.1", port
        )
        return await asyncio.open_connection(sock=sock)

    def _on_event(self, event: str, obj: dict[str, Any]) -> None:
        kind, meta = obj.get("kind"), obj["metadata"]
        if kind == "DaemonSet" and event in ("created", "updated"):
            self._start_thread(self._run_daemon_pod, obj)
        elif kind == "Namespace" and event == "updated":
            # The DaemonSet controller retries a refused pod: a relabelled namespace may
            # admit it now.
            for ds in self.api.objects("DaemonSet", meta["name"]):
                if not self._daemon_pods(meta["name"], ds["metadata"]["name"]):
                    self._start_thread(self._run_daemon_pod, ds)
        elif kind == "DaemonSet" and event == "deleted":
            self._stop_daemon_pods(meta["namespace"], meta["name"])
        elif kind == "Pod" and event == "deleted":
            pod = self.backing.pop((meta["namespace"], meta["name"]), None)
            if pod is not None:
                self._start_thread(lambda _o: pod.close(), obj)

    def _start_thread(self, fn: Any, obj: dict[str, Any]) -> None:
        t = threading.Thread(target=fn, args=(obj,), daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _daemon_pods(self, namespace: str, ds_name: str) -> list[dict[str, Any]]:
        return [pod for pod in self.api.objects("Pod", namespace)
                if pod["metadata"].get("labels", {}).get("fake/daemonset") == ds_name]  # fmt: skip

    def _stop_daemon_pods(self, namespace: str, ds_name: str) -> None:
        for pod in self._daemon_pods(namespace, ds_name):
            self.api.remove("Pod", pod["metadata"]["name"], namespace)

    def _resolve_env(self, namespace: str, env: list[dict[str, Any]]) -> dict[str, str]:
        # What a container runtime gives a container whose image sets no PATH (sbin too:
        # the agent runs iptables and nsenter from there).
        out = {"PATH": RUNTIME_PATH}
        for item in env:
            if "value" in item:
                out[item["name"]] = item["value"]
            field = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if field == "status.hostIP":  # the node, as its pods reach it: the bridge
                out[item["name"]] = self.network.host_address
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = self.api.get("Secret", ref["name"], namespace) or {}
                raw = (secret.get("data") or {}).get(ref["key"], "")
                out[item["name"]] = base64.b64decode(raw).decode()
        return out

    def _run_daemon_pod(self, ds: dict[str, Any]) -> None:
        ns, ds_name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        self._stop_daemon_pods(ns, ds_name)  # a rolling update, all at once
        template = ds["spec"]["template"]
        container = template["spec"]["containers"][0]
        name = f"{ds_name}-{secrets.token_hex(3)}"
        node_labels = (self.api.get("Node", NODE, "") or {}).get("metadata", {}).get("labels", {})
        selector = template["spec"].get("nodeSelector") or {}
        if any(node_labels.get(k) != v for k, v in selector.items()):  # no node for it
            self._daemonset_status(ds, ready=False, scheduled=0, desired=0)
            return
        refusal = self._pod_security_refusal(ns, template["spec"])
        if refusal is not None:  # the DaemonSet controller's create is refused: no pod
            self._event(ds, "FailedCreate", f'Error creating: pods "{name}" is forbidden: '
                        f"{refusal}")  # fmt: skip
            self._daemonset_status(ds, ready=False, scheduled=0)
            return
        labels = {**template["metadata"].get("labels", {}), "fake/daemonset": ds_name}
        meta = {"name": name, "namespace": ns, "labels": labels}
        spec = {**template["spec"], "nodeName": NODE}
        image = container.get("image", "")
        waiting = {"reason": "ContainerCreating"}
        if image in self.unpullable:
            waiting = {"reason": "ErrImagePull", "message": f'failed to pull and unpack image '
                       f'"docker.io/library/{image}": not found'}  # fmt: skip
        self.api.put({"kind": "Pod", "metadata": meta, "spec": spec,
                      "status": {"phase": "Pending", "containerStatuses": [
                          {"name": container["name"], "ready": False, "image": image,
                           "state": {"waiting": waiting}}]}})  # fmt: skip
        self._daemonset_status(ds, ready=False)
        if image in self.unpullable:
            return
        argv = [*image_entrypoint(), *container.get("args", [])]
        listen = argv[argv.index("--listen") + 1] if "--listen" in argv else "127.0.0.1:0"
        cid = secrets.token_hex(32)
        try:
            pod = self.network.add_pod(
                name,
                argv=argv,
                env=self._resolve_env(ns, container.get("env", [])),
                wait_port=int(listen.rsplit(":", 1)[1]),
                container_id=cid,
                user=container_user(template["spec"], container),
                capabilities=container_capabilities(container.get("securityContext") or {}),
            )
        except Exception as exc:
            self.api.update_status("Pod", name, ns, {"phase": "Failed", "message": str(exc)})
            return
        if self.api.get("Pod", name, ns) is None:  # deleted while starting
            pod.close()
            return
        self.backing[(ns, name)] = pod
        status = _ready_status(pod, [container["name"]], {container["name"]: cid})
        self.api.update_status("Pod", name, ns, status)
        self._daemonset_status(ds, ready=True)

    def _pod_security_refusal(self, ns: str, spec: dict[str, Any]) -> str | None:
        """What Pod Security Admission says of a pod with this spec in namespace `ns`
        (the checks of the baseline level that the agent's pod meets), or None."""
        labels = ((self.api.get("Namespace", ns, "") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        level = labels.get("pod-security.kubernetes.io/enforce", self.pod_security_default)
        if level not in ("baseline", "restricted"):
            return None
        found = []
        if spec.get("hostPID"):
            found.append("host namespaces (hostPID=true)")
        added = sorted({c for ct in spec.get("containers", [])
                        for c in ((ct.get("securityContext") or {}).get("capabilities") or {})
                        .get("add", []) if c not in BASELINE_CAPS})  # fmt: skip
        if added:
            found.append("non-default capabilities (container \"agent\" must not include "
                         + ", ".join(f'"{c}"' for c in added) + " in securityContext"
                         ".capabilities.add)")  # fmt: skip
        if not found:
            return None
        return f'violates PodSecurity "{level}:latest": ' + ", ".join(found)

    def _event(self, obj: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event about `obj`, as its controller records it."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.api.put({
            "kind": "Event", "apiVersion": "v1",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "daemonset-controller"},
        })  # fmt: skip

    def _daemonset_status(
        self, ds: dict[str, Any], ready: bool, scheduled: int = 1, desired: int = 1
    ) -> None:
        """What the DaemonSet controller reports for this one-node cluster (what
        `kubectl rollout status` and `get ds` read)."""
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        current = self.api.get("DaemonSet", name, ns)
        if current is None:
            return
        n = int(ready)
        self.api.update_status("DaemonSet", name, ns, {
            "observedGeneration": current["metadata"].get("generation", 1),
            "desiredNumberScheduled": desired, "currentNumberScheduled": scheduled,
            "updatedNumberScheduled": scheduled, "numberReady": n, "numberAvailable": n,
            "numberUnavailable": desired - n, "numberMisscheduled": 0,
        })  # fmt: skip

    def close(self) -> None:
        for t in list(self._threads):
            t.join(15)
        for pod in list(self.backing.values()):
            pod.close()
        self.backing.clear()
