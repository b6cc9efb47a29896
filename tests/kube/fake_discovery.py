"""What the fake API server says about itself and prints for kubectl (pure functions):
/version, legacy discovery (/api, /apis, APIResourceLists), the OpenAPI v3 index, and
server-side printing (`meta.k8s.io/v1` Table) as `kubectl get` asks for it."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
SCHEMA_VERSION = "1.30"  # of kubernetes-validate's schemas: the 422s and the OpenAPI docs
SHORT_NAMES = {
    "pods": ["po"], "services": ["svc"], "namespaces": ["ns"], "nodes": ["no"],
    "serviceaccounts": ["sa"], "deployments": ["deploy"], "daemonsets": ["ds"],
    "replicasets": ["rs"], "statefulsets": ["sts"], "cronjobs": ["cj"], "rollouts": ["ro"],
}  # fmt: skip
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# Subresources the server serves, by resource: (name, kind, verbs).
SUBRESOURCES = {
    "pods": [("portforward", "PodPortForwardOptions", ["create", "get"]), ("log", "Pod", ["get"])],
    "daemonsets": [("status", "DaemonSet", ["get", "patch", "update"])],
}


class KindLike(Protocol):
    kind: str
    group_version: str
    plural: str
    namespaced: bool


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list(kinds: Iterable[KindLike]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for k in kinds:
        if "/" in k.group_version:
            group, version = k.group_version.split("/")
            groups.setdefault(group, [])
            if version not in groups[group]:
                groups[group].append(version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                "preferredVersion": {
                    "groupVersion": f"{group}/{versions[0]}",
                    "version": versions[0],
                },
            }
            for group, versions in sorted(groups.items())
        ],
    }


def api_resource_list(group_version: str, kinds: Iterable[KindLike]) -> dict[str, Any] | None:
    resources: list[dict[str, Any]] = []
    for k in kinds:
        if k.group_version != group_version:
            continue
        resources.append({
            "name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
            "kind": k.kind, "verbs": VERBS, **({"shortNames": SHORT_NAMES[k.plural]}
                                                if k.plural in SHORT_NAMES else {}),
        })  # fmt: skip
        for sub, kind, verbs in SUBRESOURCES.get(k.plural, []):
            resources.append({"name": f"{k.plural}/{sub}", "singularName": "",
                              "namespaced": k.namespaced, "kind": kind,
                              "verbs": verbs})  # fmt: skip
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}  # fmt: skip


def openapi_v3_index(kinds: Iterable[KindLike]) -> dict[str, Any]:
    """/openapi/v3: the group versions whose schemas the server has (kubectl reads it to
    learn that the server validates fields itself: `fieldValidation`)."""
    paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=fake"}}
    for k in kinds:
        if "/" in k.group_version:
            paths[f"apis/{k.group_version}"] = {
                "serverRelativeURL": f"/openapi/v3/apis/{k.group_version}?hash=fake"
            }
    return {"paths": paths}


@functools.cache
def _schemas() -> str:
    """kubernetes-validate's copy of the Kubernetes OpenAPI definitions, as the JSON text of
    OpenAPI v3 `components.schemas` (its $refs rewritten)."""
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    version = sorted(p.name for p in base.glob(f"v{SCHEMA_VERSION}.*-local"))[-1]
    text = (base / version / "_definitions.json").read_text()
    defs = json.loads(text.replace('"#/$defs/', '"#/components/schemas/'))["$defs"]
    return json.dumps(defs)


def _schema_name(k: KindLike) -> str | None:
    group, _, version = k.group_version.rpartition("/")
    for name, schema in json.loads(_schemas()).items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, k.kind):
                return str(name)
    return None


# Query parameters kube-apiserver takes on writes; kubectl reads `fieldValidation` here to
# learn that the server validates fields itself.
WRITE_PARAMS = [
    {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
    for name in ("dryRun", "fieldManager", "fieldValidation", "force")
]


def openapi_v3_doc(group_version: str, kinds: Iterable[KindLike]) -> dict[str, Any] | None:
    """/openapi/v3/api/v1, /openapi/v3/apis/G/V: each kind's paths, with its
    x-kubernetes-group-version-kind and write parameters, and every schema."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    group, _, version = group_version.rpartition("/")
    paths: dict[str, Any] = {}
    for k in kinds:
        if k.group_version != group_version:
            continue
        gvk = {"group": group, "version": version, "kind": k.kind}
        schema = _schema_name(k)
        body = {"content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{schema}"}}}} if schema else {}  # fmt: skip

        def op(action: str, params: list[dict[str, Any]], gvk: dict[str, str] = gvk,
               body: dict[str, Any] = body) -> dict[str, Any]:  # fmt: skip
            ok = {"description": "OK", **body}
            return {"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                    "parameters": params, "responses": {"200": ok}}  # fmt: skip

        where = f"{prefix}/namespaces/{{namespace}}/{k.plural}" if k.namespaced else (
            f"{prefix}/{k.plural}")  # fmt: skip
        paths[where] = {"get": op("list", []), "post": op("post", WRITE_PARAMS)}
        paths[f"{where}/{{name}}"] = {
            "get": op("get", []), "put": op("put", WRITE_PARAMS),
            "patch": op("patch", WRITE_PARAMS), "delete": op("delete", WRITE_PARAMS[:1]),
        }  # fmt: skip
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": json.loads(_schemas())},
    }


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def age(created: str | None, now: datetime.datetime) -> str:
    """kubectl's short human duration (translateTimestampSince)."""
    if not created:
        return "<unknown>"
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    s = max(0, int((now - then).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 8 * 3600:
        return f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _pod_cells(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = status.get("phase", "Unknown")
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    return [f"{ready}/{len(containers)}", reason, restarts]


def _namespace_cells(obj: dict[str, Any]) -> list[Any]:
    return [(obj.get("status") or {}).get("phase", "Active")]


def _daemonset_cells(obj: dict[str, Any]) -> list[Any]:
    st = obj.get("status") or {}
    keys = ("desiredNumberScheduled", "currentNumberScheduled", "numberReady",
            "updatedNumberScheduled", "numberAvailable")  # fmt: skip
    return [int(st.get(k, 0)) for k in keys]


# (column name, type) after Name and before Age; the cells' function.
COLUMNS: dict[str, tuple[list[tuple[str, str]], Any]] = {
    "pods": ([("Ready", "string"), ("Status", "string"), ("Restarts", "string")], _pod_cells),
    "namespaces": ([("Status", "string")], _namespace_cells),
    "daemonsets": (
        [
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
        ],
        _daemonset_cells,
    ),
}


def table(plural: str, items: list[dict[str, Any]], list_meta: dict[str, Any],
          include_object: str, now: datetime.datetime) -> dict[str, Any]:  # fmt: skip
    """The Table kube-apiserver prints for these objects."""
    extra, cells = COLUMNS.get(plural, ([], lambda _o: []))
    columns = [("Name", "string"), *extra, ("Age", "string")]
    rows = []
    for obj in items:
        meta = obj.get("metadata") or {}
        row: dict[str, Any] = {
            "cells": [meta.get("name"), *cells(obj), age(meta.get("creationTimestamp"), now)]
        }
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":  # the default: Metadata
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": meta}  # fmt: skip
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [
            {
                "name": name,
                "type": kind,
                "format": "name" if name == "Name" else "",
                "description": name,
                "priority": 0,
            }
            for name, kind in columns
        ],
        "rows": rows,
    }
