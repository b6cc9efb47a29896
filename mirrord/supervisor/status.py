"""How a run ended, and what it cost (both engines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExitStatus:
    """How the first program ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @property
    def shell_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 1


@dataclass
class Stats:
    stops: int = 0  # ptrace stops (ptrace engine, and chdir injections)
    notifications: int = 0
    syscalls: dict[str, int] = field(default_factory=dict)
