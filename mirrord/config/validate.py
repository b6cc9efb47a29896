"""Turn a parsed config dict into a `MirrordConfig`, with errors a person can act on.

pydantic reports union branches, tags and internal type names; here each error becomes one
line `dotted.path: what is wrong` (unknown keys get a "did you mean" when one is close).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .models import TAG_PREFIX, MirrordConfig, TargetConfig


def validate_config(raw: Mapping[str, Any]) -> tuple[MirrordConfig | None, list[str]]:
    """Validate `raw`; return the config, or None and every error found."""
    if not isinstance(raw, Mapping):
        return None, [f"(top level): expected an object of settings, got {_show(raw)}"]
    try:
        return MirrordConfig.model_validate(dict(raw)), []
    except ValidationError as error:
        # The user wrote `target` as the path itself: report paths as they wrote them.
        shorthand = not isinstance(raw.get("target"), dict) or any(
            key in raw["target"] for key in _target_kind_tags()
        )
        return None, _translate(error, shorthand)


def _translate(error: ValidationError, target_shorthand: bool) -> list[str]:
    lines: list[str] = []
    for detail in error.errors(include_url=False):
        loc = tuple(detail["loc"])
        if target_shorthand and loc[:2] == ("target", "path"):
            detail["loc"] = ("target", *loc[2:])
        line = _line(detail)
        if line not in lines:
            lines.append(line)
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(TAG_PREFIX):
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # Drop tags: `~obj` etc., and the kind tags of a target path (they repeat the next key,
    # or stand alone right after "path").
    out: list[int | str] = []
    for index, part in enumerate(loc):
        if isinstance(part, str) and part.startswith(TAG_PREFIX):
            continue
        if (
            isinstance(part, str)
            and index >= 1
            and loc[index - 1] in ("path", "target")
            and loc[:1] == ("target",)
            and part in _target_kind_tags()
        ):
            continue
        out.append(part)
    return tuple(out)


@cache
def _target_kind_tags() -> frozenset[str]:
    from .models import _OBJECT_KINDS  # the tags of the target union are these keys

    return frozenset(_OBJECT_KINDS)


def _quoted_choices(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def _line(detail: ErrorDetails) -> str:
    loc = _clean_loc(tuple(detail["loc"]))
    path = _path(loc)
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key{_suggestion(loc)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "literal_error":
        choices = _quoted_choices(str(ctx.get("expected", "")))
        return f"{path}: expected one of {', '.join(choices)}"
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return f"{path}: {simple}, got {_show(value)}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{path}: must be at least {ctx.get('ge', ctx.get('gt'))}, got {_show(value)}"
    if kind in ("less_than_equal", "less_than"):
        return f"{path}: must be at most {ctx.get('le', ctx.get('lt'))}, got {_show(value)}"
    if kind in ("too_short", "too_long") and str(ctx.get("field_type")) == "List":
        return f"{path}: expected a pair like [80, 8080], got {_show(value)}"
    if kind == "wrong_shape":
        return f"{path}: {detail['msg']}, got {_show(value)}"
    message = detail["msg"]
    message = message.removeprefix("Value error, ")
    return f"{path}: {message}"


_SIMPLE: dict[str, str] = {
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "list_type": "expected a list",
    "none_required": "expected null",
}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _suggestion(loc: tuple[int | str, ...]) -> str:
    parent = tuple(part for part in loc[:-1] if isinstance(part, str))
    wrong = str(loc[-1])
    known = known_keys().get(".".join(parent), set())
    if wrong in known:
        # A real key, but not in this form (e.g. two target kinds in one object).
        return " here (it cannot be combined with the other keys of this object)"
    close = difflib.get_close_matches(wrong, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


@cache
def known_keys() -> dict[str, set[str]]:
    """Known key names under each dotted path (list indexes and map keys left out)."""
    index: dict[str, set[str]] = {}
    _collect(MirrordConfig, "", index, depth=0)
    # `target` may name a kind directly (shorthand), so its kind keys are known there too.
    index.setdefault("target", set()).update(_target_kind_tags(), {"container"})
    return index


def _collect(model: type[BaseModel], prefix: str, index: dict[str, set[str]], depth: int) -> None:
    if depth > 12:
        return
    names = index.setdefault(prefix, set())
    for name, field in model.model_fields.items():
        key = field.alias or name
        names.add(key)
        child = f"{prefix}.{key}" if prefix else key
        for sub in _models_in(field.annotation):
            _collect(sub, child, index, depth + 1)
    if model is TargetConfig:
        return


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Models reachable through unions and Annotated, not through lists or dicts."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)
