"""CLONE_UNTRACED cannot take a child out of the supervisor, through clone or clone3:
the ptrace engine clears the flag, the notify engine's filter is inherited anyway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_untraced_children_stay_traced(programs: dict[str, Path], engine: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mirrord.supervisor", "--hostname", "pod", "--",
         str(programs["untraced"])],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MIRRORD_ENGINE=engine),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tracer = "traced" if engine == "ptrace" else "untraced"  # the notify engine is no tracer
    assert r.stdout.splitlines() == [f"clone3 child {tracer} pod", f"clone child {tracer} pod"]
