"""Option values without typer's per-parameter pydantic adapters when none is needed.

typer 0.2x coerces each parameter's value through a pydantic TypeAdapter that it builds
the first time the parameter is processed, and click processes every parameter of a
command, given or not: for `exec`'s thirty options that was 60 ms of each start-up, for
options nobody gave. Here a parameter whose value is absent, or text for a text
annotation, is taken as it is; any other value (`--agent-ttl 5`) gets typer's own
coercion, built then, with typer's own errors. With a typer that has no such adapters
(before 0.2x), nothing is changed.
"""

from __future__ import annotations

from typing import Any

_TEXT = (str, list[str])


class _Lazy:
    """Stands in for typer's runtime parameter (`_TyperParameter._runtime_param`)."""

    def __init__(self, param: Any) -> None:
        self._param = param
        self._text = param.type_descriptor.annotation in _TEXT
        self._real: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        many = param.multiple or param.nargs == -1
        if value is None:
            return () if many else None  # as typer's coercion answers an absent value
        if self._text:
            if isinstance(value, str) and not many:
                return value
            if many and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
        return self._typers().coerce(value, param, ctx)

    def _typers(self) -> Any:
        if self._real is None:
            param = self._param
            param._runtime_param = None  # its own getter builds it when unset
            try:
                self._real = param.get_runtime_param()
            finally:
                param._runtime_param = self
        return self._real


def lazy_coercion(command: Any) -> int:
    """Give the parameters of `command` and its subcommands the lazy coercion. Returns
    how many got it (0 with a typer that builds no adapters)."""
    count = 0
    for cmd in (command, *getattr(command, "commands", {}).values()):
        for param in cmd.params:
            unset = getattr(param, "_runtime_param", False) is None
            if unset and hasattr(param, "get_runtime_param") and hasattr(param, "type_descriptor"):
                param._runtime_param = _Lazy(param)
                count += 1
    return count
