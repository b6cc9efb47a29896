"""What the user sees while the target is resolved and the agent is reached.

On a terminal: a rich spinner with the current step, replaced as steps go. Otherwise (logs,
tests) only the lines worth keeping (`say`), so output stays readable.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from rich.console import Console

from mirrord.say import say


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        self._console = Console(stderr=True, highlight=False)
        self._live = sys.stderr.isatty() if enabled is None else enabled
        self._status: Any = None
        self.last_step = "starting"

    def __enter__(self) -> Progress:
        if self._live:
            self._status = self._console.status("mirrord: connecting to the cluster")
            self._status.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def step(self, text: str) -> None:
        """The current step (shown while it lasts, remembered for a timeout message)."""
        self.last_step = text
        if self._status is not None:
            self._status.update(f"mirrord: {text}")

    def say(self, text: str) -> None:
        """A line that stays: which pod was picked, an install, a version note."""
        if self._status is not None:
            self._console.print(f"mirrord: {text}", markup=False)
        else:
            say(text)
