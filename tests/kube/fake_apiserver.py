"""A FAKE Kubernetes API server for tests: real protocol, toy storage.

It speaks the REST API the way kube-apiserver does for what mirrord and kubectl use — over
TLS (its own CA; bearer tokens or client certificates, 401 otherwise), discovery (/version,
/api, /apis, APIResourceLists, the OpenAPI v3 index), get, list with
`labelSelector`/`fieldSelector` and `limit`/`continue` pagination, watch, server-side
printing (Table), create (409 AlreadyExists, 422 from the Kubernetes OpenAPI schemas and
the selector/label rules), update (409 on a stale resourceVersion), PATCH (merge, JSON,
strategic merge, server-side apply: fake_patch.py), `dryRun=All`, delete (namespaces stay
Terminating, then cascade), Status bodies for errors, per-verb RBAC denials (403) — and the
websocket port-forward subprotocol `v4.channel.k8s.io`: channel byte prefix, data channel
2i and error channel 2i+1 per port, each opened by the port number (uint16 little endian),
errors written as text on the error channel.

It is not a cluster: objects are dicts, nothing is scheduled. Behaviour that needs
something real (pods backed by processes, the DaemonSet's agent pods, connecting to a pod's
port) is delegated to hooks, which `fake_cluster.py` provides.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from aiohttp import WSMsgType, web

from tests.kube import fake_discovery as disco
from tests.kube.fake_patch import CONTENT_TYPES, PatchError, apply_patch
from tests.kube.fake_tls import ca, peer_identity

PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"
_STOP = "stop"  # ends a watch


@dataclass(frozen=True)
class Kind:
    kind: str
    group_version: str  # "v1", "apps/v1", ...
    plural: str
    namespaced: bool = True


KINDS = [
    Kind("Pod", "v1", "pods"),
    Kind("Service", "v1", "services"),
    Kind("Secret", "v1", "secrets"),
    Kind("ServiceAccount", "v1", "serviceaccounts"),
    Kind("Namespace", "v1", "namespaces", namespaced=False),
    Kind("Node", "v1", "nodes", namespaced=False),
    Kind("Deployment", "apps/v1", "deployments"),
    Kind("StatefulSet", "apps/v1", "statefulsets"),
    Kind("ReplicaSet", "apps/v1", "replicasets"),
    Kind("DaemonSet", "apps/v1", "daemonsets"),
    Kind("Job", "batch/v1", "jobs"),
    Kind("CronJob", "batch/v1", "cronjobs"),
    Kind("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False),
    Kind(
        "ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings",
        namespaced=False,
    ),
    Kind("Role", "rbac.authorization.k8s.io/v1", "roles"),
    Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings"),
    Kind("Event", "v1", "events"),
    Kind(
        "SelfSubjectAccessReview", "authorization.k8s.io/v1", "selfsubjectaccessreviews",
        namespaced=False,
    ),
]  # fmt: skip
ROLLOUT = Kind("Rollout", "argoproj.io/v1alpha1", "rollouts")


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _error(code: int, reason: str, message: str, **details: Any) -> web.Response:
    return web.json_response(status_body(code, reason, message, **details), status=code)


# -- selectors (the label selector grammar of k8s.io/apimachinery/pkg/labels)


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    checks: list[Callable[[dict[str, str]], bool]] = []
    for req in _split_requirements(selector):
        words = req.split(None, 1)
        if len(words) == 2 and words[1].startswith(("in ", "in(", "notin ", "notin(")):
            key, rest = words[0], words[1]
            negate = rest.startswith("notin")
            values = {v.strip() for v in rest[rest.index("(") + 1 : rest.rindex(")")].split(",")}

            def f(
                lb: dict[str, str], k: str = key, vs: set[str] = values, n: bool = negate
            ) -> bool:
                return (lb.get(k) not in vs) if n else (lb.get(k) in vs)

            checks.append(f)
        elif "!=" in req:
            k, v = (s.strip() for s in req.split("!=", 1))
            checks.append(lambda lb, k=k, v=v: lb.get(k) != v)
        elif "=" in req:
            k, v = (s.strip() for s in req.replace("==", "=").split("=", 1))
            checks.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif req.startswith("!"):
            negated = req[1:].strip()
            checks.append(lambda lb, k=negated: k not in lb)
        else:
            checks.append(lambda lb, k=req: k in lb)
    return lambda labels: all(c(labels) for c in checks)


FIELDS = {
    "involvedObject.name": lambda o: (o.get("involvedObject") or {}).get("name"),
    "involvedObject.namespace": lambda o: (o.get("involvedObject") or {}).get("namespace"),
    "involvedObject.kind": lambda o: (o.get("involvedObject") or {}).get("kind"),
    "involvedObject.uid": lambda o: (o.get("involvedObject") or {}).get("uid"),
    "metadata.name": lambda o: o["metadata"].get("name"),
    "metadata.namespace": lambda o: o["metadata"].get("namespace"),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName"),
    "status.phase": lambda o: (o.get("status") or {}).get("phase"),
}


def field_matcher(selector: str) -> Callable[[dict[str, Any]], bool] | str:
    """A predicate, or an error message for an unsupported field (as the API server says)."""
    checks = []
    for req in _split_requirements(selector):
        neg = "!=" in req
        k, v = (s.strip() for s in req.replace("!=", "=").replace("==", "=").split("=", 1))
        if k not in FIELDS:
            return f"field label not supported: {k}"
        checks.append((FIELDS[k], v, neg))
    return lambda o: all((get(o) != v) if neg else (get(o) == v) for get, v, neg in checks)


_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")


def _protobuf_fields(data: bytes) -> dict[int, list[bytes | int]]:
    """A protobuf message's fields by number (varints as ints, the rest as bytes)."""
    fields: dict[int, list[bytes | int]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.setdefault(number, []).append(varint())
        elif wire == 2:
            size = varint()
            fields.setdefault(number, []).append(data[i : i + size])
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return fields


def access_review_from_protobuf(raw: bytes) -> dict[str, Any]:
    """The JSON form of a SelfSubjectAccessReview that kubectl sent as Kubernetes protobuf
    (magic "k8s\\0", a runtime.Unknown whose field 2 is the object; the object's spec is
    field 2, its resourceAttributes field 1: namespace, verb, group, version, resource,
    subresource, name)."""
    if not raw.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf body")
    obj = _protobuf_fields(raw[4:])[2][0]
    spec = _protobuf_fields(obj)[2][0]  # type: ignore[arg-type]
    attrs = _protobuf_fields(_protobuf_fields(spec)[1][0])  # type: ignore[arg-type]
    names = ["namespace", "verb", "group", "version", "resource", "subresource", "name"]
    resource = {n: attrs[k][0].decode() for k, n in enumerate(names, 1) if k in attrs}  # type: ignore[union-attr]
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {}, "spec": {"resourceAttributes": resource}}  # fmt: skip


def _selected(obj: dict[str, Any], labels: Any, fields: Any) -> bool:
    return bool(labels(obj["metadata"].get("labels") or {}) and fields(obj))


PortConnector = Callable[
    [str, str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
]
Hook = Callable[[str, dict[str, Any]], None]  # (event, object); runs on the server's thread


class FakeApiServer:
    """Run with `with FakeApiServer() as api:`; `api.url`, `api.write_kubeconfig(path)`."""

    def __init__(self, token: str = "fake-user-token", user: str = "dev", tls: bool = True) -> None:
        self.token = token
        self.user = user
        self.tls = tls
        self._watches: set[tuple[Kind, str, Any, Any, asyncio.Queue[tuple[str, Any]]]] = set()
        self.kinds: dict[tuple[str, str], Kind] = {(k.group_version, k.plural): k for k in KINDS}
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self._lock = threading.RLock()
        self._rv = 1000
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) → 403
        # A deleted namespace stays Terminating this long (its controller emptying it); a
        # finalizer that never finishes: float("inf").
        self.terminating_s = 0.5
        self.requests: list[tuple[str, str]] = []  # (method, path?query), for assertions
        self.hooks: list[Hook] = []
        self.connect_pod_port: PortConnector | None = None
        # (namespace, pod) → its container's log, or None (the kubelet's side: fake_cluster)
        self.pod_log: Callable[[str, str], str | None] | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle (the server runs on its own thread and event loop)

    def start(self) -> FakeApiServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_app())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_app())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-apiserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _start_app(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        ssl_context = ca().server_context() if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def _stop_app(self) -> None:
        for *_, queue in list(self._watches):  # watches end as the server stops
            queue.put_nowait((_STOP, None))
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cluster_entry(self, *, ca_data: bool = True) -> dict[str, Any]:
        """A kubeconfig `cluster` for this server (with its CA unless told otherwise)."""
        entry: dict[str, Any] = {"server": self.url}
        if self.tls and ca_data:
            entry["certificate-authority-data"] = ca().data()
        return entry

    def write_kubeconfig(
        self,
        path: Path,
        *,
        namespace: str = "default",
        token: str | None = None,
        client_cert: str | None = None,
        ca_data: bool = True,
    ) -> Path:
        """client_cert: authenticate with a client certificate for that user (CN) instead
        of the token; ca_data=False leaves the server's CA out (verification fails)."""
        user: dict[str, Any] = {"token": token or self.token}
        if client_cert is not None:
            cert, key = ca().client(client_cert, ("mirrord:users",)).data()
            user = {"client-certificate-data": cert, "client-key-data": key}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": self.cluster_entry(ca_data=ca_data)}],
            "users": [{"name": self.user, "user": user}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": self.user,
                                             "namespace": namespace}},
                {"name": "other", "context": {"cluster": "fake", "user": self.user}},
            ],
            "current-context": "fake",
        }  # fmt: skip
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- direct store access (tests and the fake cluster)

    def serve_rollouts(self) -> None:
        """Like installing the Argo Rollouts CRD."""
        self.kinds[(ROLLOUT.group_version, ROLLOUT.plural)] = ROLLOUT

    def _kind_of(self, kind: str) -> Kind:
        return next(k for k in self.kinds.values() if k.kind == kind)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or overwrite an object as is (plus server-set metadata)."""
        k = self._kind_of(obj["kind"])
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", k.group_version)
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "default") if k.namespaced else ""
        if k.namespaced:
            meta["namespace"] = ns
        with self._lock:
            self._stamp(meta)
            existed = (k.plural, ns, meta["name"]) in self._objects
            self._objects[(k.plural, ns, meta["name"])] = obj
            self._notify("MODIFIED" if existed else "ADDED", obj)
        return obj

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        k = self._kind_of(kind)
        with self._lock:
            obj = self._objects.get((k.plural, namespace if k.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def update_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        k = self._kind_of(kind)
        with self._lock:
            obj = self._objects.get((k.plural, namespace, name))
            if obj is not None:
                obj["status"] = status
                self._stamp(obj["metadata"], new=False)
                self._notify("MODIFIED", obj)

    def objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        k = self._kind_of(kind)
        with self._lock:
            return [
                copy.deepcopy(o)
                for (plural, ns, _), o in self._objects.items()
                if plural == k.plural and (namespace is None or ns == namespace)
            ]

    def remove(self, kind: str, name: str, namespace: str = "default") -> None:
        k = self._kind_of(kind)
        with self._lock:
            obj = self._objects.pop((k.plural, namespace if k.namespaced else "", name), None)
        if obj is not None:
            self._notify("DELETED", obj)
            self._fire("deleted", obj)

    def _stamp(self, meta: dict[str, Any], new: bool = True) -> None:
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if new:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )

    def _fire(self, event: str, obj: dict[str, Any]) -> None:
        for hook in list(self.hooks):
            hook(event, copy.deepcopy(obj))

    def _notify(self, event: str, obj: dict[str, Any]) -> None:
        """Tell the watches this change concerns (any thread)."""
        loop = self._loop
        if loop is None or not self._watches:
            return
        k = self._kind_of(obj["kind"])
        ns = obj["metadata"].get("namespace", "")
        for kind, wns, labels, fields, queue in list(self._watches):
            if kind is k and (not wns or wns == ns) and _selected(obj, labels, fields):
                item = (event, copy.deepcopy(obj))
                loop.call_soon_threadsafe(queue.put_nowait, item)

    # -- HTTP

    def _parse(self, path: str) -> tuple[Kind, str, str | None, str | None] | str:
        """(kind, namespace, name, subresource) or an error message."""
        seg = [s for s in path.split("/") if s]
        if seg[:2] == ["api", "v1"]:
            gv, rest = "v1", seg[2:]
        elif len(seg) >= 3 and seg[0] == "apis":
            gv, rest = f"{seg[1]}/{seg[2]}", seg[3:]
        else:
            return "the server could not find the requested resource"
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return "the server could not find the requested resource"
        kind = self.kinds.get((gv, rest[0]))
        if kind is None or (kind.namespaced != bool(ns) and not (not ns and len(rest) == 1)):
            return "the server could not find the requested resource"
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return kind, ns, name, sub

    def _authenticate(self, request: web.Request) -> str | None:
        """The user a request is from: a bearer token, or a client certificate our CA
        signed (CN = user); None: 401."""
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return self.user
        transport = request.transport
        peer = peer_identity(transport.get_extra_info("peercert") if transport else None)
        return peer[0] if peer else None

    def _discovery(self, request: web.Request) -> web.StreamResponse | None:
        """/version, /api, /apis, /api/v1, /apis/G/V and the OpenAPI v3 index; None: not one."""
        path = request.path.rstrip("/")
        if request.method != "GET":
            return None
        if path == "/version":
            return web.json_response(disco.VERSION)
        if path == "/api":
            return web.json_response(disco.api_versions(self.url.split("//", 1)[1]))
        if path == "/apis":
            return web.json_response(disco.api_group_list(self.kinds.values()))
        seg = [x for x in path.split("/") if x]
        gv = None
        if seg == ["api", "v1"]:
            gv = "v1"
        elif len(seg) == 3 and seg[0] == "apis":
            gv = f"{seg[1]}/{seg[2]}"
        if gv is not None:
            listing = disco.api_resource_list(gv, self.kinds.values())
            if listing is None:
                return _error(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(listing)
        if path == "/openapi/v3":
            return web.json_response(disco.openapi_v3_index(self.kinds.values()))
        if path.startswith("/openapi/v3/"):
            rest = path.removeprefix("/openapi/v3/")
            gv = "v1" if rest == "api/v1" else rest.removeprefix("apis/")
            doc = disco.openapi_v3_doc(gv, self.kinds.values())
            if doc is not None:
                return web.json_response(doc)
        if path.startswith("/openapi/"):  # v2 is served as protobuf only: not here
            return _error(404, "NotFound", "the server could not find the requested resource")
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        user = self._authenticate(request)
        if user is None:
            return _error(401, "Unauthorized", "Unauthorized")
        found = self._discovery(request)
        if found is not None:
            return found
        protobuf = "protobuf" in request.headers.get("Content-Type", "")
        parsed = self._parse(request.path)
        if isinstance(parsed, str):
            return _error(404, "NotFound", parsed)
        kind, ns, name, sub = parsed
        group = kind.group_version.rpartition("/")[0]
        watching = request.query.get("watch") in ("1", "true")
        get = "get" if name else ("watch" if watching else "list")
        verb = {"GET": get, "POST": "create", "PUT": "update", "DELETE": "delete",
                "PATCH": "patch"}.get(request.method, "?")  # fmt: skip
        resource = kind.plural + (f"/{sub}" if sub else "")
        if sub == "portforward":
            verb = "create"  # what RBAC checks for the websocket upgrade (GET)
        if (verb, resource) in self.forbidden or user != self.user:  # others have no roles
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            return _error(
                403, "Forbidden",
                f'{resource} is forbidden: User "{user}" cannot {verb} resource '
                f'"{resource}" in API group "{group}"{where}',
                kind=kind.plural, name=name or "",
            )  # fmt: skip
        if sub == "portforward" and kind.plural == "pods" and name:
            return await self._portforward(request, ns, name)
        if sub == "log" and kind.plural == "pods" and name and request.method == "GET":
            return self._log(kind, ns, name)
        if kind.plural == "selfsubjectaccessreviews" and request.method == "POST":
            raw = await request.read()
            review = access_review_from_protobuf(raw) if protobuf else json.loads(raw)
            return self._access_review(user, review)
        if protobuf:  # only kubectl's typed authorization calls send protobuf to us
            return _error(415, "UnsupportedMediaType", "the body of the request was in an "
                          "unknown format - accepted media types include: application/json, "
                          "application/yaml")  # fmt: skip
        if sub is not None and not (sub == "status" and kind.plural in disco.SUBRESOURCES):
            return _error(404, "NotFound", "the server could not find the requested resource")
        dry_run = request.query.get("dryRun") == "All"
        table = disco.wants_table(request.headers.get("Accept", ""))
        include = request.query.get("includeObject", "Metadata")
        if request.method == "GET" and name:
            return self._get(kind, ns, name, include if table else None)
        if request.method == "GET" and watching:
            return await self._watch(request, kind, ns)
        if request.method == "GET":
            return self._list(kind, ns, request.query, include if table else None)
        if request.method == "POST" and not name:
            return self._create(kind, ns, await request.json(), dry_run)
        if request.method == "PUT" and name:
            return self._update(kind, ns, name, await request.json(), dry_run)
        if request.method == "PATCH" and name:
            return await self._patch(request, kind, ns, name, dry_run)
        if request.method == "DELETE" and name:
            options = await request.json() if request.can_read_body else {}
            dry_run = dry_run or "All" in ((options or {}).get("dryRun") or [])
            return self._delete(kind, ns, name, dry_run)
        return _error(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _invalid(self, kind: Kind, obj: dict[str, Any]) -> web.Response | None:
        """422 for what kube-apiserver's validation refuses: the OpenAPI schema (unknown
        fields too, as `fieldValidation=Strict`), label syntax, a selector that does not
        select its own template."""
        name = (obj.get("metadata") or {}).get("name", "")
        problems: list[tuple[str, str]] = []  # (field, what is wrong with it)
        try:
            kubernetes_validate.validate(obj, disco.SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "<root>"
            problems.append((where, f"Invalid value: {exc.message}"))
        except kubernetes_validate.SchemaNotFoundError:
            pass
        labels = dict((obj.get("metadata") or {}).get("labels") or {})
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        template_labels = template.get("labels") or {}
        for field, values in (
            ("metadata.labels", labels),
            ("spec.template.metadata.labels", template_labels),
        ):
            for value in values.values():
                if not _LABEL_VALUE.fullmatch(str(value)):
                    problems.append((field, (
                        f'Invalid value: "{value}": a valid label must be 63 characters or '
                        "less, alphanumeric, '-', '_' or '.', starting and ending with an "
                        "alphanumeric character"
                    )))  # fmt: skip
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")
        workload = kind.kind in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet")
        if workload and selector and any(template_labels.get(k) != v for k, v in selector.items()):
            problems.append(("spec.template.metadata.labels", (
                    f"Invalid value: {json.dumps(template_labels)}: `selector` does not match "
                    "template `labels`"
                )))  # fmt: skip
        if not problems:
            return None
        text = ", ".join(f"{field}: {what}" for field, what in problems)
        return _error(422, "Invalid", f'{kind.kind}.{kind.group_version.split("/")[0]} "{name}" '
                      f"is invalid: {text}", name=name, kind=kind.kind,
                      causes=[{"reason": "FieldValueInvalid", "message": what, "field": field}
                              for field, what in problems])  # fmt: skip

    def _log(self, kind: Kind, ns: str, name: str) -> web.Response:
        with self._lock:
            if (kind.plural, ns, name) not in self._objects:
                return self._not_found(kind, name)
        text = self.pod_log(ns, name) if self.pod_log is not None else None
        if text is None:
            return _error(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        return web.Response(text=text, content_type="text/plain")

    def _access_review(self, user: str, review: dict[str, Any]) -> web.Response:
        """`kubectl auth can-i`: what this server's RBAC (`forbidden`) says for the user."""
        attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
        resource = attrs.get("resource", "") + (
            f"/{attrs['subresource']}" if attrs.get("subresource") else ""
        )
        allowed = user == self.user and (attrs.get("verb"), resource) not in self.forbidden
        return web.json_response(
            {**review, "status": {"allowed": allowed,
                                  **({} if allowed else {"reason": "forbidden by RBAC"})}},
            status=201,
        )  # fmt: skip

    def _not_found(self, kind: Kind, name: str) -> web.Response:
        group = kind.group_version.rpartition("/")[0]
        res = f"{kind.plural}.{group}" if group else kind.plural
        return _error(404, "NotFound", f'{res} "{name}" not found', name=name, group=group,
                      kind=kind.plural)  # fmt: skip

    def _get(self, kind: Kind, ns: str, name: str, table: str | None) -> web.Response:
        with self._lock:
            obj = self._objects.get((kind.plural, ns, name))
            if obj is None:
                return self._not_found(kind, name)
            if table is not None:
                meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                return web.json_response(disco.table(kind.plural, [obj], meta, table, _now()))
            return web.json_response(obj)

    async def _watch(self, request: web.Request, kind: Kind, ns: str) -> web.StreamResponse:
        """Newline-delimited watch events: ADDED for what exists (unless a resourceVersion
        says the client has it), then every change, until the client goes or
        `timeoutSeconds` pass."""
        labels = label_matcher(request.query.get("labelSelector", ""))
        fields = field_matcher(request.query.get("fieldSelector", ""))
        if isinstance(fields, str):
            return _error(400, "BadRequest", fields)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        entry = (kind, ns, labels, fields, queue)
        with self._lock:
            self._watches.add(entry)
            if request.query.get("resourceVersion", "0") in ("", "0"):
                for (plural, ons, _), obj in sorted(self._objects.items()):
                    mine = plural == kind.plural and (not ns or ons == ns)
                    if mine and _selected(obj, labels, fields):
                        queue.put_nowait(("ADDED", copy.deepcopy(obj)))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    event, obj = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if event == _STOP:
                    break
                await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(entry)
        return response

    def _list(self, kind: Kind, ns: str, query: Any, table: str | None = None) -> web.Response:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))
        if isinstance(fields, str):
            return _error(400, "BadRequest", fields)
        limit = int(query.get("limit", "0") or 0)
        start_after: tuple[str, ...] = ()
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                start_after = tuple(token["start"])
            except (ValueError, KeyError):
                return _error(400, "BadRequest", "continue key is not valid")
        with self._lock:
            keys = sorted(
                (n, nm) for (p, n, nm) in self._objects if p == kind.plural and (not ns or n == ns)
            )
            matching = []
            for key in keys:
                if key <= start_after:
                    continue
                obj = self._objects[(kind.plural, *key)]
                if labels(obj["metadata"].get("labels") or {}) and fields(obj):
                    matching.append(obj)
            page = matching[:limit] if limit else matching
            meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
            if limit and len(matching) > limit:
                last = page[-1]["metadata"]
                start = [last.get("namespace", ""), last["name"]]
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"rv": self._rv, "start": start}).encode()
                ).decode()
                meta["remainingItemCount"] = len(matching) - limit
            body = {"kind": f"{kind.kind}List", "apiVersion": kind.group_version,
                    "metadata": meta, "items": page}  # fmt: skip
            if table is not None:
                body = disco.table(kind.plural, page, meta, table, _now())
            text = json.dumps(body)
        return web.Response(text=text, content_type="application/json")

    def _create(
        self, kind: Kind, ns: str, obj: dict[str, Any], dry_run: bool = False
    ) -> web.Response:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return _error(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
        obj.setdefault("apiVersion", kind.group_version)
        obj.setdefault("kind", kind.kind)
        invalid = self._invalid(kind, obj)
        if invalid is not None:
            return invalid
        with self._lock:
            if ns and ("namespaces", "", ns) not in self._objects:
                return _error(404, "NotFound", f'namespaces "{ns}" not found', name=ns,
                              kind="namespaces")  # fmt: skip
            if ns and self._terminating(ns):  # the NamespaceLifecycle admission plugin
                return _error(
                    403, "Forbidden", f"{kind.plural} \"{name}\" is forbidden: unable to create "
                    f"new content in namespace {ns} because it is being terminated",
                    name=name, kind=kind.plural,
                    causes=[{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                             "message": f"namespace {ns} is being terminated"}],
                )  # fmt: skip
            if (kind.plural, ns, name) in self._objects:
                return _error(409, "AlreadyExists",
                              f'{kind.plural} "{name}" already exists', name=name,
                              kind=kind.plural)  # fmt: skip
            if ns:
                meta["namespace"] = ns
            meta["generation"] = 1
            self._stamp(meta)
            if dry_run:
                return web.json_response(obj, status=201)
            self._objects[(kind.plural, ns, name)] = obj
            stored = copy.deepcopy(obj)
            self._notify("ADDED", stored)
        self._fire("created", stored)
        return web.json_response(stored, status=201)

    def _update(
        self, kind: Kind, ns: str, name: str, obj: dict[str, Any], dry_run: bool = False
    ) -> web.Response:
        obj.setdefault("apiVersion", kind.group_version)
        obj.setdefault("kind", kind.kind)
        invalid = self._invalid(kind, obj)
        if invalid is not None:
            return invalid
        with self._lock:
            current = self._objects.get((kind.plural, ns, name))
            if current is None:
                return self._not_found(kind, name)
            rv = obj.get("metadata", {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                return _error(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} '
                              f'"{name}": the object has been modified', name=name)  # fmt: skip
            meta = obj.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "deletionTimestamp"):
                if current["metadata"].get(key):
                    meta[key] = current["metadata"][key]
            if ns:
                meta["namespace"] = ns
            obj.setdefault("status", current.get("status"))
            # metadata.generation counts spec changes (what `rollout status` compares).
            generation = int(current["metadata"].get("generation", 1))
            changed = obj.get("spec") != current.get("spec")
            meta["generation"] = generation + 1 if changed else generation
            if obj == current:
                return web.json_response(copy.deepcopy(current))  # a no-op: nothing changes
            self._stamp(meta, new=False)
            if dry_run:
                return web.json_response(obj)
            self._objects[(kind.plural, ns, name)] = obj
            stored = copy.deepcopy(obj)
            self._notify("MODIFIED", stored)
        self._fire("updated", stored)
        return web.json_response(stored)

    async def _patch(
        self, request: web.Request, kind: Kind, ns: str, name: str, dry_run: bool
    ) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        how = CONTENT_TYPES.get(content_type)
        if how is None:
            return _error(415, "UnsupportedMediaType",
                          f"the body of the request was in an unknown format - accepted media "
                          f"types include: {', '.join(CONTENT_TYPES)}")  # fmt: skip
        raw = await request.read()
        try:
            body = yaml.safe_load(raw) if how == "apply" else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            return _error(400, "BadRequest", f"the patch is not valid: {exc}")
        with self._lock:
            current = copy.deepcopy(self._objects.get((kind.plural, ns, name)))
        if current is None and how != "apply":
            return self._not_found(kind, name)
        try:
            patched = apply_patch(how, current, body)
        except PatchError as exc:
            return _error(422, "Invalid", str(exc))
        if current is None:  # server-side apply of something new: create it
            patched.setdefault("metadata", {})["name"] = name
            return self._create(kind, ns, patched, dry_run)
        patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._update(kind, ns, name, patched, dry_run)

    def _terminating(self, ns: str) -> bool:
        obj = self._objects.get(("namespaces", "", ns))
        return obj is not None and (obj.get("status") or {}).get("phase") == "Terminating"

    def _delete(self, kind: Kind, ns: str, name: str, dry_run: bool = False) -> web.Response:
        with self._lock:
            if dry_run:
                obj = self._objects.get((kind.plural, ns, name))
                return (self._not_found(kind, name) if obj is None
                        else web.json_response(copy.deepcopy(obj)))  # fmt: skip
            if kind.plural == "namespaces":
                return self._delete_namespace(name)
            obj = self._objects.pop((kind.plural, ns, name), None)
            if obj is None:
                return self._not_found(kind, name)
            self._notify("DELETED", obj)
        self._fire("deleted", obj)
        return web.json_response(obj)

    def _delete_namespace(self, name: str) -> web.Response:
        """As kube-apiserver: the namespace turns Terminating at once, its contents go, and
        the namespace itself goes when its controller is done (`terminating_s` later)."""
        obj = self._objects.get(("namespaces", "", name))
        if obj is None:
            return self._not_found(self.kinds[("v1", "namespaces")], name)
        if not self._terminating(name):
            obj["status"] = {"phase": "Terminating"}
            obj["metadata"]["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            self._stamp(obj["metadata"], new=False)
            self._notify("MODIFIED", obj)
            gone = [self._objects.pop(key) for key in [k for k in self._objects if k[1] == name]]
            for o in gone:
                self._notify("DELETED", o)
                self._fire("deleted", o)
            if self.terminating_s != float("inf"):
                assert self._loop is not None
                self._loop.call_later(self.terminating_s, self._finalize_namespace, name)
        return web.json_response(copy.deepcopy(obj))

    def _finalize_namespace(self, name: str) -> None:
        with self._lock:
            if self._terminating(name):
                obj = self._objects.pop(("namespaces", "", name))
                self._notify("DELETED", obj)
                self._fire("deleted", obj)

    # -- port-forward (websocket, v4.channel.k8s.io)

    async def _portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        with self._lock:
            pod = copy.deepcopy(self._objects.get(("pods", ns, name)))
        if pod is None:
            return self._not_found(self.kinds[("v1", "pods")], name)
        ports: list[int] = []
        for value in request.query.getall("ports", []):
            for p in value.split(","):
                if not p.isdigit() or not 0 < int(p) < 65536:
                    return _error(400, "BadRequest", f'unable to parse "{value}" as a port')
                ports.append(int(p))
        if not ports:
            return _error(400, "BadRequest", 'query parameter "ports" is required')
        if (pod.get("status") or {}).get("phase") != "Running":
            return _error(400, "BadRequest", f"pod {name} is not running")
        ws = web.WebSocketResponse(protocols=(PORTFORWARD_PROTOCOL,))
        if not ws.can_prepare(request).ok:
            return _error(400, "BadRequest", "port-forward needs a websocket upgrade")
        await ws.prepare(request)
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task[None]] = []
        for i, port in enumerate(ports):
            header = port.to_bytes(2, "little")
            await ws.send_bytes(bytes([2 * i]) + header)
            await ws.send_bytes(bytes([2 * i + 1]) + header)
            try:
                assert self.connect_pod_port is not None, "no pod port connector"
                reader, writer = await self.connect_pod_port(ns, name, port)
            except (OSError, AssertionError) as exc:
                uid = pod["metadata"].get("uid")
                await ws.send_bytes(bytes([2 * i + 1]) + (
                    f"error forwarding port {port} to pod {name}, uid {uid}: {exc}"
                ).encode())  # fmt: skip
                continue
            writers[2 * i] = writer
            pumps.append(asyncio.ensure_future(self._pod_to_ws(reader, ws, 2 * i)))
        try:
            if writers:
                reading = asyncio.ensure_future(self._ws_to_pods(ws, writers))
                await asyncio.wait([reading, *pumps], return_when=asyncio.FIRST_COMPLETED)
                reading.cancel()
        finally:
            for t in pumps:
                t.cancel()
            for w in writers.values():
                w.close()
            await ws.close()
        return ws

    async def _pod_to_ws(
        self, reader: asyncio.StreamReader, ws: web.WebSocketResponse, channel: int
    ) -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(bytes([channel]) + data)

    async def _ws_to_pods(
        self, ws: web.WebSocketResponse, writers: dict[int, asyncio.StreamWriter]
    ) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and msg.data:
                writer = writers.get(msg.data[0])
                if writer is not None and len(msg.data) > 1:
                    writer.write(msg.data[1:])
                    await writer.drain()
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                return
