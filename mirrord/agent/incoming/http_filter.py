"""Which HTTP requests an HTTP filter selects (pure: no I/O, tested on plain values).

Semantics follow upstream mirrord's `feature.network.incoming.http_filter`:
- `header_filter`: a regex searched in every header rendered as `Name: value`; the request
  matches if any header does. Case-insensitive.
- `path_filter`: a regex searched in the path without the query and in the path with the
  query; either is enough. Case-insensitive.
- `method_filter`: the method name, compared case-insensitively (not a regex).
- `all_of` / `any_of`: lists of {header | path | method} conditions with the same rules.
- `ports`: the filter applies on these ports only; elsewhere the connection is taken whole.
Exactly one kind is set. Regexes are Python `re` (upstream uses fancy-regex; the common
subset — classes, anchors, alternation, look-around — behaves the same).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

ConditionKind = Literal["header", "path", "method"]


class HttpFilterError(ValueError):
    """The filter cannot be used (bad regex, no kind, several kinds)."""


@dataclass(frozen=True)
class Request:
    """The parts of a request head a filter looks at."""

    method: str
    target: str  # the request-target as sent: path, optionally ?query
    headers: Sequence[tuple[str, str]]


class RequestFilter(Protocol):
    """What a subscription asks of a filter (HttpFilter, probes.NodeRequests)."""

    def matches(self, request: Request) -> bool: ...


class RequestRouter(Protocol):
    """Where a filtered connection sends each request: the key of a client-side target
    (a session's delivery), or None for the pod's server."""

    def route(self, request: Request) -> str | None: ...


LOCAL = "local"


@dataclass(frozen=True)
class OneFilter:
    """A single subscription's router: matching requests to it (LOCAL), the rest to the
    pod."""

    filter: RequestFilter

    def route(self, request: Request) -> str | None:
        return LOCAL if self.filter.matches(request) else None


@dataclass(frozen=True)
class Condition:
    kind: ConditionKind
    pattern: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def make(cls, kind: ConditionKind, pattern: str) -> Condition:
        if kind == "method":
            if not pattern.strip():
                raise HttpFilterError("method filter is empty")
            return cls(kind, pattern.strip())
        try:
            regex = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise HttpFilterError(f"{kind} filter {pattern!r} is not a valid regex: {e}") from None
        return cls(kind, pattern, regex)

    def matches(self, request: Request) -> bool:
        if self.kind == "method":
            return request.method.upper() == self.pattern.upper()
        assert self._regex is not None
        if self.kind == "header":
            return any(self._regex.search(f"{name}: {value}") for name, value in request.headers)
        path = request.target.split("?", 1)[0]
        return bool(self._regex.search(path) or self._regex.search(request.target))


@dataclass(frozen=True)
class HttpFilter:
    """`combine` is "all" or "any" over `conditions` (a single filter is one condition)."""

    conditions: tuple[Condition, ...]
    combine: Literal["all", "any"] = "any"
    ports: frozenset[int] = frozenset()

    def applies_to(self, port: int) -> bool:
        return not self.ports or port in self.ports

    def matches(self, request: Request) -> bool:
        results = (c.matches(request) for c in self.conditions)
        return all(results) if self.combine == "all" else any(results)


def build_filter(
    *,
    header_filter: str | None = None,
    path_filter: str | None = None,
    method_filter: str | None = None,
    all_of: Iterable[tuple[ConditionKind, str]] | None = None,
    any_of: Iterable[tuple[ConditionKind, str]] | None = None,
    ports: Iterable[int] = (),
) -> HttpFilter:
    """Validate and compile one filter; exactly one kind must be given."""
    given = [
        name
        for name, value in (
            ("header_filter", header_filter),
            ("path_filter", path_filter),
            ("method_filter", method_filter),
            ("all_of", all_of),
            ("any_of", any_of),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise HttpFilterError(
            "an HTTP filter needs exactly one of header_filter, path_filter, method_filter, "
            f"all_of, any_of (got {', '.join(given) or 'none'})"
        )
    port_set = frozenset(ports)
    if header_filter is not None:
        return HttpFilter((Condition.make("header", header_filter),), ports=port_set)
    if path_filter is not None:
        return HttpFilter((Condition.make("path", path_filter),), ports=port_set)
    if method_filter is not None:
        return HttpFilter((Condition.make("method", method_filter),), ports=port_set)
    combine: Literal["all", "any"] = "all" if all_of is not None else "any"
    items = list(all_of if all_of is not None else any_of or ())
    if not items:
        raise HttpFilterError(f"{combine}_of needs at least one condition")
    return HttpFilter(
        tuple(Condition.make(kind, pattern) for kind, pattern in items), combine, port_set
    )
