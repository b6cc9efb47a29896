"""The one exception every config problem becomes, so the CLI never shows a traceback."""

from __future__ import annotations

import re


class ConfigError(Exception):
    """A config file (or the command-line flags) could not be turned into a valid config.

    `source` names where the problem is: a file name, or ``"<flags>"`` for command-line flags.
    `errors` holds one readable line per problem; all problems found are reported at once.
    """

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = list(errors) or ["invalid configuration"]
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.errors) == 1:
            return f"{self.source}: {self.errors[0]}"
        lines = [f"{self.source}: {len(self.errors)} problems:"]
        lines.extend(f"  - {error}" for error in self.errors)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


def bad_regex(key: str, pattern: str, flags: int = 0) -> str | None:
    """`key: bad regex 'PATTERN': why`, or None when the pattern compiles (the regexes the
    features compile later are checked with the config, named by their key)."""
    try:
        re.compile(pattern, flags)
    except re.error as e:
        return f"{key}: bad regex {pattern!r}: {e}"
    return None
