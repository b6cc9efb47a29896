"""The command line itself: verify-config, schema, --version, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.shared_data import UPSTREAM, needs_upstream

MIRRORD = str(Path(sys.executable).with_name("mirrord"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MIRRORD, *args], capture_output=True, text=True, timeout=30)


@needs_upstream
def test_verify_config_ok_for_a_real_upstream_file() -> None:
    path = (
        UPSTREAM / "configs" / "metalbear-co__mirrord-python-debug-example__.mirrord__mirrord.json"
    )
    r = run("verify-config", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: OK"


def test_verify_config_lists_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "mirrord.json"
    bad.write_text('{"feature": {"network": {"incoming": {"mode": "stael"}}, "fs": {"mdoe": 1}}}')
    r = run("verify-config", str(bad))
    assert r.returncode == 1
    assert "feature.network.incoming.mode: expected one of mirror, steal, off" in r.stderr
    assert "feature.fs.mdoe: unknown key (did you mean `mode`?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_verify_config_json_output(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text("target: pid/1\nfeature:\n  env: true\n")
    r = run("verify-config", "--json", str(good))
    out = json.loads(r.stdout)
    assert out["type"] == "Success" and out["warnings"] == []
    assert out["config"] == {"path": {"pid": 1}, "namespace": None}
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    r = run("verify-config", "--json", str(bad))
    out = json.loads(r.stdout)
    assert out["type"] == "Fail" and out["errors"] == ["nope: unknown key"]


def test_verify_config_missing_file(tmp_path: Path) -> None:
    r = run("verify-config", str(tmp_path / "missing.json"))
    assert r.returncode == 1
    assert "missing.json" in r.stderr and "Traceback" not in r.stderr


def test_schema_is_json_schema_of_our_config() -> None:
    r = run("schema")
    schema = json.loads(r.stdout)
    assert {"target", "feature", "agent"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_exec_without_a_program_is_a_usage_error() -> None:
    r = run("exec", "-t", "pid/1")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("mirrord ")
