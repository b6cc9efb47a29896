"""The command line itself: verify-config, schema, --version, usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirrord.cli.argv import option_values
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


def _agents_of(pid: int) -> list[int]:
    """Live local agents spawned by mirrord process `pid` (their environment names it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"MIRRORD_AGENT_PARENT_PID={pid}".encode() in environ:
            out.append(int(entry))
    return out


@pytest.mark.parametrize(
    ("args", "spawned"),
    [
        # click refuses it (no timing report then: not checked)
        (["exec", "-t", "targetless", "--no-such-flag", "--", "true"], None),
        (["exec", "-t", "targetless", "-f", "/nonexistent.json", "--", "true"], True),
        (["exec", "-t", "pod/web", "--", "true"], False),  # needs a cluster, no local agent
    ],
)
def test_an_agent_spawned_for_exec_is_gone_when_exec_fails_early(
    args: list[str], spawned: bool | None
) -> None:
    """As root, `exec` spawns its local agent before click has read the line; a run that
    ends before the session (or needs no local agent) leaves none behind. (This checks the
    end state: mirrord kills the agent itself, and --parent-death would end it too.)"""
    if os.geteuid() != 0:
        pytest.skip("the early agent is spawned as root only")
    env = {**os.environ, "KUBECONFIG": "/nonexistent", "MIRRORD_TIMING": "1"}
    p = subprocess.Popen([MIRRORD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)  # fmt: skip
    _out, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "Traceback" not in err
    if spawned is not None:
        assert ("local agent spawned" in err) is spawned, err
    assert _agents_of(p.pid) == []


def test_option_values_read_as_click_does() -> None:
    names = {"-t": "target", "--target": "target", "--context": "context"}
    takes = {"-t", "--target", "--context", "-f", "--config-file", "-a"}.__contains__
    assert option_values(["-t", "pid/4", "--", "prog"], names, takes) == {"target": "pid/4"}
    assert option_values(["-tpid/4", "prog"], names, takes) == {"target": "pid/4"}
    assert option_values(["--target=pod/a", "--target", "pod/b"], names, takes) == {
        "target": "pod/b"  # the last one wins
    }
    # Other options' values are skipped, not taken for the program.
    assert option_values(["-f", "x.json", "-a", "ns", "--context", "c", "-t", "targetless"],
                         names, takes) == {"context": "c", "target": "targetless"}  # fmt: skip
    # The program's own arguments are not ours.
    assert option_values(["--steal", "prog", "-t", "pid/9"], names, takes) == {}
    assert option_values(["--", "prog", "--target", "x"], names, takes) == {}
    assert option_values(["-t"], names, takes) is None  # no value: cannot tell
