"""agent/creds.py with the capabilities a Kubernetes agent has: root without
CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH reaches a non-root user's private files only as that
user, and a missing CAP_SETUID/CAP_SETGID is said, never silently served as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from mirrord.agent.creds import Creds, CredentialsError, acting_as
home = sys.argv[1]
def attempt(path, creds=None):
    try:
        with acting_as(creds), open(path) as f:
            return f.read()
    except CredentialsError as e:
        return "credentials: " + e.strerror
    except PermissionError:
        return "denied"
app = Creds(1000, 1000, ())
print(attempt(home + "/secret"))
print(attempt(home + "/secret", app))
print(attempt(home + "/root-only", app))
print(attempt(home + "/secret"))  # root again, without DAC_OVERRIDE
"""


@pytest.fixture
def home() -> Iterator[Path]:
    """A user's private directory: only uid 1000 may enter it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = Path(tempfile.mkdtemp(prefix="mirrord-creds-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        home.mkdir(mode=0o700)
        (home / "secret").write_text("app's")
        (home / "root-only").write_text("root's")
        (home / "secret").chmod(0o600)
        (home / "root-only").chmod(0o600)
        os.chown(home / "secret", 1000, 1000)
        os.chown(home, 1000, 1000)
        yield home
    finally:
        shutil.rmtree(base)


def run(home: Path, bounding: str) -> list[str]:
    r = subprocess.run(
        ["setpriv", f"--bounding-set={bounding}", "--", sys.executable, "-c", SCRIPT, str(home)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_agents_capabilities_reach_a_users_files_as_that_user(home: Path) -> None:
    assert run(home, "-all,+sys_admin,+sys_ptrace,+net_admin,+net_raw,+setuid,+setgid") == [
        "denied",  # root without DAC_OVERRIDE
        "app's",  # as the file's owner
        "denied",  # a file the user may not read stays unread
        "denied",  # and root's own credentials came back, without DAC_OVERRIDE
    ]


def test_without_setuid_setgid_the_switch_fails_loudly(home: Path) -> None:
    lines = run(home, "-all,+sys_admin,+sys_ptrace,+net_admin,+net_raw")
    assert lines[0] == "denied"
    assert (
        lines[1]
        == lines[2]
        == (
            "credentials: setgroups: Operation not permitted (the agent needs CAP_SETGID; "
            "`mirrord agent install` gives its DaemonSet that, see docs/kubernetes.md)"
        )
    )


def test_without_setuid_only(home: Path) -> None:
    lines = run(home, "-all,+sys_admin,+sys_ptrace,+setgid")
    assert lines[1] == (
        "credentials: the agent could not act as the target's fs uid 1000 (it needs "
        "CAP_SETUID; `mirrord agent install` gives its DaemonSet that, see docs/kubernetes.md)"
    )
