"""The `--explain` summary: counts per decision and rule, what was remote and failed, and
the user's rules that never matched (pure: records in, lines out; `mirrord explain FILE`
reads a saved trace through the same code)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

# Failures listed at most (the counts stay exact).
MAX_FAILURES = 50
OK_RESULTS = frozenset({"connected", "NOERROR"})

_TITLES = {
    "file": "files",
    "connect": "outgoing",
    "dns": "DNS",
    "incoming": "incoming",
    "env": "environment",
}


class Summary:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (kind, decision, rule)
        self.rules: dict[str, None] = {}  # the user's rules, in config order
        self.matched: set[str] = set()
        self.failures: dict[tuple[str, str], str] = {}  # (kind, what) -> result
        self.failed = 0

    def add(self, record: Mapping[str, Any]) -> None:
        kind = str(record.get("kind", ""))
        rule = str(record.get("rule", ""))
        if kind == "rule":
            self.rules.setdefault(rule, None)
            return
        if kind == "file.mapping":
            self.matched.add(rule)
            return
        if kind == "file.result":  # a remote file's failure, after its decision
            self._fail("file", str(record.get("path")), str(record.get("result")))
            return
        decision = str(record.get("decision", ""))
        if kind == "incoming":
            decision = f"{decision} {record.get('event', '')}".strip()
        self.counts[(kind, decision, rule)] += 1
        self.matched.add(rule)
        result = record.get("result")
        if result and result not in OK_RESULTS and record.get("decision") != "local":
            self._fail(kind, _what(kind, record), str(result))

    def _fail(self, kind: str, what: str, result: str) -> None:
        self.failed += 1
        if (kind, what) not in self.failures and len(self.failures) < MAX_FAILURES:
            self.failures[(kind, what)] = result

    def lines(self) -> list[str]:
        out = [f"explain: {sum(self.counts.values())} decisions"]
        for kind, title in _TITLES.items():
            rows = sorted(
                ((d, r, n) for (k, d, r), n in self.counts.items() if k == kind),
                key=lambda row: (row[0], -row[2], row[1]),
            )
            if not rows:
                continue
            total = sum(n for _, _, n in rows)
            out.append(f"  {title}: {total}")
            for decision, rule, n in rows:
                out.append(f"    {n:>6}  {decision:<22} {rule}")
        if self.failures:
            out.append(f"  remote and failed: {self.failed}")
            for (kind, what), result in self.failures.items():
                out.append(f"    {_TITLES.get(kind, kind)}: {what}: {result}")
            if self.failed > len(self.failures):
                out.append(f"    … and {self.failed - len(self.failures)} more")
        unused = [r for r in self.rules if r not in self.matched]
        for rule in unused:
            out.append(f"  never matched: {rule}")
        return out


def _what(kind: str, record: Mapping[str, Any]) -> str:
    if kind == "file":
        return str(record.get("path"))
    if kind == "connect":
        name = record.get("name")
        dest = str(record.get("destination"))
        return f"{record.get('protocol', 'tcp')} {dest}" + (f" ({name})" if name else "")
    if kind == "dns":
        return str(record.get("name"))
    return json.dumps(dict(record), sort_keys=True)


class TraceError(ValueError):
    pass


def summarize_file(lines: Iterable[str], source: str = "<trace>") -> Summary:
    """The summary of a saved trace (`--explain=FILE`); TraceError names a bad line."""
    summary = Summary()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise TraceError(f"{source}: line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise TraceError(f"{source}: line {number}: not a mirrord --explain record")
        summary.add(record)
    return summary
