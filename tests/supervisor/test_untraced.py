"""CLONE_UNTRACED cannot take a child out of tracing, through clone or clone3 (a user
notification since clone3 became one), with notifications and with the ptrace fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("no_notify", ["0", "1"], ids=["notifications", "ptrace-fallback"])
def test_untraced_children_stay_traced(programs: dict[str, Path], no_notify: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mirrord.supervisor", "--hostname", "pod", "--",
         str(programs["untraced"])],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MIRRORD_NO_NOTIFY=no_notify),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["clone3 child traced", "clone child traced"]
