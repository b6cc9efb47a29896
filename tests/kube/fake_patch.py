"""The PATCH bodies kube-apiserver takes, applied to plain dicts (pure functions):
JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch for the fields of
the kinds this server stores (lists merged by their patchMergeKey, `$patch: delete|replace`
directives), and server-side apply approximated as a strategic merge of the applied
configuration (no field ownership: one manager at a time, which is how the tests use it)."""

from __future__ import annotations

import copy
from typing import Any

# patchMergeKey of the list fields of core/apps types (k8s.io/api struct tags).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "ownerReferences": "uid", "conditions": "type",
    "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}  # fmt: skip


class PatchError(ValueError):
    """The patch cannot be applied (kube-apiserver answers 422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):  # $retainKeys, $setElementOrder/…: order and pruning hints
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge_patch(out.get(key), value, key)
        return out
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        return _merge_list(target, patch, MERGE_KEYS[field])
    return copy.deepcopy(patch)


def _merge_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map in a merge list without its merge key {key!r}: {item!r}")
        at = next((i for i, cur in enumerate(out) if cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                out.pop(at)
        elif at is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[at] = strategic_merge_patch(out[at], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(target)
    for op in ops:
        kind, parts = op.get("op"), _pointer(str(op.get("path", "")))
        if not parts:
            raise PatchError("JSON patch on the whole object is not supported")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise PatchError(f"path {op['path']} does not exist")
        last = parts[-1]
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            else:
                if kind == "replace" and last not in parent:
                    raise PatchError(f"replace: path {op['path']} does not exist")
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError):
                raise PatchError(f"remove: path {op['path']} does not exist") from None
        elif kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unsupported JSON patch operation {kind!r}")
    return doc


CONTENT_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


def apply_patch(kind: str, current: dict[str, Any] | None, body: Any) -> dict[str, Any]:
    """The object after a PATCH of this content kind ('merge', 'strategic', 'json',
    'apply'); `current` None only for server-side apply (it creates)."""
    if kind == "json":
        if not isinstance(body, list):
            raise PatchError("a JSON patch is a list of operations")
        return dict(json_patch(current or {}, body))
    if not isinstance(body, dict):
        raise PatchError("the patch body must be an object")
    if kind == "merge":
        return dict(merge_patch(current or {}, body))
    return dict(strategic_merge_patch(current or {}, body))
