"""Every key of upstream's JSON schema, set to a valid value, must be accepted.

The configs are generated from `../shared/upstream/mirrord-schema.json`: for each property
path (through `$defs`, `anyOf`/`oneOf`, arrays and maps) and each shape it may take (bool
shorthand, enum value, object form...), one config sets just that key, with any required
sibling keys filled in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mirrord.config import ConfigError, config_from_dict
from tests.shared_data import AVAILABLE, MISSING_REASON, UPSTREAM

if not AVAILABLE:
    pytest.skip(MISSING_REASON, allow_module_level=True)
SCHEMA_PATH = UPSTREAM / "mirrord-schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
DEFS: dict[str, Any] = SCHEMA["$defs"]

Wrap = Callable[[Any], Any]


def deref(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DEFS[schema["$ref"].split("/")[-1]]
    return schema


def branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema, flattened, without the null alternative."""
    schema = deref(schema)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives and "properties" not in schema:
        out: list[dict[str, Any]] = []
        for alternative in alternatives:
            out.extend(branches(alternative))
        return out
    types = schema.get("type")
    if isinstance(types, list):
        if types == ["null"]:
            return []
        return [dict(schema, type=t) for t in types if t != "null"]
    if types == "null":
        return []
    return [schema]


def example(schema: dict[str, Any]) -> Any:
    """A valid value for `schema` (its first alternative, required keys filled in)."""
    options = branches(schema)
    if not options:
        return None
    schema = options[0]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "boolean":
        return True
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "string":
        return "127.0.0.1" if schema.get("format") == "ip" else "x"
    if kind == "array":
        if "prefixItems" in schema:
            return [example(item) for item in schema["prefixItems"]]
        return [example(schema.get("items", {}))]
    if kind == "object" or "properties" in schema:
        return object_example(schema)
    return "x"  # x-kubernetes-preserve-unknown-fields, int-or-string


def object_example(schema: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key in schema.get("required", []):
        value[key] = example(schema.get("properties", {}).get(key, {}))
    # Properties listed beside a oneOf (queue splits, redis branches): take the first branch.
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives and "properties" in schema:
        value.update(example(alternatives[0]))
        for key in deref(alternatives[0]).get("required", []):
            value.setdefault(key, example(deref(alternatives[0])["properties"].get(key, {})))
    if (
        "type" in schema
        and value == {}
        and schema.get("additionalProperties")
        not in (
            None,
            False,
        )
    ):
        return {}
    return value


def generate(
    schema: dict[str, Any], path: str, wrap: Wrap, depth: int = 0
) -> Iterator[tuple[str, Any]]:
    """(path, config) for every way to set the value at `path` and every key below it."""
    if depth > 14:
        return
    for option in branches(schema):
        if "const" in option or "enum" in option:
            for value in option.get("enum", [option.get("const")]):
                yield path, wrap(value)
            continue
        kind = option.get("type")
        if kind == "array":
            items = option.get("items")
            if "prefixItems" in option:
                yield path, wrap([example(item) for item in option["prefixItems"]])
            elif items is not None:
                yield from generate(items, f"{path}[]", lambda v, w=wrap: w([v]), depth + 1)
            continue
        if kind == "object" or "properties" in option:
            properties = option.get("properties", {})
            alternatives = option.get("oneOf") or option.get("anyOf")
            if alternatives and properties:
                # Keys of each alternative, on top of the shared ones.
                for alternative in alternatives:
                    merged = dict(deref(alternative))
                    merged["properties"] = {**properties, **merged.get("properties", {})}
                    merged["required"] = [*option.get("required", []), *merged.get("required", [])]
                    merged.pop("oneOf", None)
                    merged.pop("anyOf", None)
                    yield from generate(merged, path, wrap, depth + 1)
                continue
            base = object_example(option)
            yield path, wrap(base)
            for key, sub in properties.items():

                def inner(
                    v: Any, key: str = key, base: dict[str, Any] = base, w: Wrap = wrap
                ) -> Any:
                    return w({**base, key: v})

                yield from generate(sub, f"{path}.{key}" if path else key, inner, depth + 1)
            extra = option.get("additionalProperties")
            if isinstance(extra, dict):
                yield from generate(
                    extra, f"{path}.*", lambda v, b=base, w=wrap: w({**b, "name": v}), depth + 1
                )
            continue
        if kind == "string" and path in TARGET_STRINGS:
            # The schema only says "string"; a target string has a grammar.
            yield path, wrap(TARGET_STRINGS[path])
            continue
        yield path, wrap(example(option))


TARGET_STRINGS = {"target": "deployment/x/container/y", "target.path": "pod/x"}


def all_cases() -> list[tuple[str, Any]]:
    cases = list(generate(SCHEMA, "", lambda v: v))
    return [(path, config) for path, config in cases if path]


CASES = all_cases()
PATHS = sorted({path for path, _ in CASES})


def test_the_generator_covers_the_schema() -> None:
    # A generator that silently shrinks would make the test below prove nothing.
    assert len(PATHS) > 300, len(PATHS)
    assert len(CASES) > 500, len(CASES)
    for key in SCHEMA["properties"]:
        assert key in PATHS
    for path in (
        "feature.env.include",
        "feature.fs.mode",
        "feature.network.incoming.mode",
        "feature.network.incoming.http_filter.all_of[].header",
        "agent.tolerations[].tolerationSeconds",
        "target.path.deployment",
        "feature.split_queues.*.queue_type",
        "feature.db_branches[].connection",
    ):
        assert path in PATHS, path


@pytest.mark.parametrize(
    ("path", "config"), CASES, ids=[f"{i}:{p}" for i, (p, _) in enumerate(CASES)]
)
def test_every_schema_path_is_accepted(path: str, config: Any) -> None:
    try:
        config_from_dict(config)
    except ConfigError as error:
        pytest.fail(f"{path}: {json.dumps(config)} rejected: {error.errors}")


def deep_merge(into: Any, other: Any) -> Any:
    if isinstance(into, dict) and isinstance(other, dict):
        out = dict(into)
        for key, value in other.items():
            out[key] = deep_merge(out[key], value) if key in out else value
        return out
    return into


def test_all_keys_at_once() -> None:
    # One config holding as many keys as can coexist: each generated config is merged in
    # unless it contradicts what is there (a bool shorthand where an object is, two target
    # kinds, include beside exclude). Nearly all must fit, and the result must parse.
    merged: dict[str, Any] = {}
    kept = 0
    for _, config in CASES:
        candidate = deep_merge(merged, config)
        try:
            config_from_dict(candidate)
        except ConfigError:
            continue
        merged = candidate
        kept += 1
    config, warnings = config_from_dict(merged)
    assert config.agent.startup_timeout == 1
    assert len(warnings) > 10
    assert kept > 0.8 * len(CASES), (kept, len(CASES))
    count = sum(1 for _ in _leaves(merged))
    assert count > 120, count


def _leaves(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node


@pytest.mark.parametrize(
    "garbage",
    [
        {"feature": {"env": "yes"}},
        {"feature": {"fs": {"mode": "readwrite"}}},
        {"feature": {"network": {"incoming": {"port_mapping": [[1]]}}}},
        {"agent": {"ttl": 70000}},
        {"agent": {"tolerations": "all"}},
        {"feature": {"split_queues": {"q": {"queue_type": "NATS"}}}},
        {"feature": {"db_branches": [{"type": "oracle"}]}},
        {"feature": {"copy_target": {"scale": True}}},
        {"experimental": {"no_such_switch": True}},
        {"startup_retry": {"max_ms": "5"}},
        {"skip_processes": 3},
        {"container": {"cli_extra_args": "x"}},
        {"feature": {"preview": {"ttl_mins": "forever"}}},
    ],
)
def test_garbage_in_unbuilt_sections_is_rejected(garbage: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config_from_dict(garbage)
