"""A clone on its own, without the team's `../shared` beside it: the whole suite still
collects, and the tests that read upstream mirrord's data skip, saying where they looked.

The checkout's files (tracked, and untracked but not ignored: the work tree as it would be
committed) are copied to a temporary directory with no `shared` sibling, and pytest runs
there with this interpreter, the copy first on the path and MIRRORD_SHARED_DIR pointing
nowhere. A small plugin records which `mirrord` and `tests.shared_data` that run imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loaded into the child pytest with -p: where its modules came from, and what it collected.
PROBE = """
import json, os, sys

def pytest_collection_finish(session):
    modules = {name: getattr(sys.modules.get(name), "__file__", None)
               for name in ("mirrord", "tests.shared_data")}
    with open(os.environ["BARE_CLONE_PROBE_OUT"], "w") as f:
        json.dump({"modules": modules, "collected": len(session.items)}, f)
"""


def work_tree_files(root: Path) -> list[str]:
    """The checkout's files as they would be committed now: tracked and untracked, not
    ignored, deleted ones left out."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"{root} is not a git checkout ({e})")
    names = [name for name in out.decode().split("\0") if name]
    return [name for name in names if os.path.lexists(root / name)]


def upstream_users(root: Path) -> list[str]:
    """The test modules that use the upstream data (import tests.shared_data)."""
    imports = re.compile(r"^\s*(from tests\.shared_data import|import tests\.shared_data)", re.M)
    return sorted(
        str(path.relative_to(root))
        for path in (root / "tests").rglob("test_*.py")
        if imports.search(path.read_text())
    )


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    dest = tmp_path / "checkout"  # tmp_path holds no `shared`
    for name in work_tree_files(ROOT):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    assert not (dest.parent / "shared").exists()
    return dest


def child_env(clone: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "bare_clone_probe.py").write_text(PROBE)
    env["PYTHONPATH"] = os.pathsep.join([str(clone), str(probe_dir)])
    env["MIRRORD_SHARED_DIR"] = str(tmp_path / "no-shared-here")
    env["BARE_CLONE_PROBE_OUT"] = str(tmp_path / "probe.json")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_pytest(
    clone: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = Path(env["BARE_CLONE_PROBE_OUT"])
    out.unlink(missing_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "bare_clone_probe", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.exists(), f"the child pytest never finished collecting:\n{r.stdout}\n{r.stderr}"
    probe: dict[str, object] = json.loads(out.read_text())
    return r, probe


def assert_imported_from(clone: Path, probe: dict[str, object]) -> None:
    modules = probe["modules"]
    assert isinstance(modules, dict)
    for name, file in modules.items():
        assert file is not None and Path(file).is_relative_to(clone), (name, file)


@pytest.mark.timeout(900)
def test_a_clone_without_shared_collects_and_skips_what_needs_upstream(
    clone: Path, tmp_path: Path
) -> None:
    if "BARE_CLONE_PROBE_OUT" in os.environ:
        pytest.skip("already inside a bare-clone run")
    env = child_env(clone, tmp_path)
    missing = f"upstream test data not found at {tmp_path / 'no-shared-here' / 'upstream'}"

    r, probe = run_pytest(clone, env, "--collect-only", "-q")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr
    assert not re.search(r"\berrors?\b", r.stdout.splitlines()[-1]), r.stdout[-5000:]
    assert_imported_from(clone, probe)
    assert isinstance(probe["collected"], int) and probe["collected"] > 100

    users = upstream_users(clone)
    assert {
        "tests/config/test_config_schema_paths.py",
        "tests/config/test_config_upstream_files.py",
        "tests/test_cli.py",
    } <= set(users)
    r, probe = run_pytest(clone, env, "-q", "-rs", *users)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr
    assert_imported_from(clone, probe)
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    for module in users:
        ours = [line for line in skipped if f" {module}:" in line]
        assert ours, f"{module} reported no skip:\n{r.stdout[-5000:]}"
        assert all(missing in line and "MIRRORD_SHARED_DIR" in line for line in ours), ours
