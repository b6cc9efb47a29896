"""`make demo`'s program (python -m mirrord.demo) as a newcomer runs it: every step works
and it exits 0; a step that cannot work makes it exit non-zero with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (namespaces)")


def demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirrord.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_the_demo_runs_every_step() -> None:
    r = demo(dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "answered by the local program" in r.stdout
    assert "demo pod removed" in r.stdout


def test_the_demo_fails_when_its_steal_cannot_work() -> None:
    """It printed 'the steal did not start' and exited 0 on a machine without iptables."""
    r = demo({**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"})  # no sbin: no iptables
    assert r.returncode != 0, r.stdout + r.stderr
    assert "the steal step needs iptables" in r.stderr
    assert "demo pod removed" not in r.stdout
