"""What mirrord tells the user: one line on stderr, prefixed `mirrord: `, at once."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(f"mirrord: {msg}", file=sys.stderr, flush=True)
