"""A mirrord user's command line works here: upstream's flags, usage errors, -h, shell
completions, and no Python traceback for any bad input (a table of them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mirrord.cli.argv import DEFAULT_CONFIG_FILE, normalize
from mirrord.cli.main import app

MIRRORD = str(Path(sys.executable).with_name("mirrord"))

# Upstream mirrord 3.250's flags (mirrord/cli/src/config.rs: ExecParams with TargetParams
# and AgentParams; PortForwardArgs; ListTargetArgs; VerifyConfigArgs), long and short.
UPSTREAM_FLAGS: dict[str, list[str]] = {
    "exec": [
        "-t", "--target", "-n", "--target-namespace", "-a", "--agent-namespace",
        "-l", "--agent-log-level", "-i", "--agent-image", "--agent-ttl",
        "--agent-startup-timeout", "-e", "--ephemeral-container", "--fs-mode",
        "-x", "--override-env-vars-exclude", "-s", "--override-env-vars-include",
        "--no-remote-dns", "--skip-processes", "-c", "--accept-invalid-certificates",
        "--steal", "--no-outgoing", "--no-tcp-outgoing", "--no-udp-outgoing",
        "--no-telemetry", "--disable-version-check", "-f", "--config-file", "--context",
        "--env-file", "-k", "--key",
    ],
    "port-forward": [
        "-t", "--target", "-n", "--target-namespace", "-a", "--agent-namespace",
        "-l", "--agent-log-level", "-i", "--agent-image", "--agent-ttl",
        "--agent-startup-timeout", "-e", "--ephemeral-container",
        "-c", "--accept-invalid-certificates", "--no-telemetry", "--disable-version-check",
        "-f", "--config-file", "--context", "-L", "--port-mapping", "--port-mappings",
        "-R", "--reverse-port-mapping",
    ],
    "ls": ["-o", "--output", "-n", "--namespace", "-f", "--config-file", "-t", "--target-type"],
    "verify-config": ["--ide", "--resolved"],
}  # fmt: skip


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "KUBECONFIG": "/nonexistent/kubeconfig", **(env or {})}
    return subprocess.run(
        [MIRRORD, *args], capture_output=True, text=True, timeout=60, env=full, cwd=cwd
    )


def _options(command: str) -> set[str]:
    sub = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("command", sorted(UPSTREAM_FLAGS))
def test_every_upstream_flag_is_accepted(command: str) -> None:
    missing = set(UPSTREAM_FLAGS[command]) - _options(command)
    assert not missing, f"mirrord {command} lacks upstream's {sorted(missing)}"


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        (["--no-telemetry"], "--no-telemetry has no effect here"),
        (["--disable-version-check"], "--disable-version-check has no effect here"),
        (["--agent-ttl", "30"], "--agent-ttl has no effect here"),
        (["-e"], "--ephemeral-container has no effect here"),
        (["--skip-processes", "git"], "--skip-processes has no effect here"),
        (["-k", "mykey"], "--key has no effect here"),
    ],
)
def test_no_effect_flags_say_so_once(flag: list[str], words: str, tmp_path: Path) -> None:
    # A bad target stops exec right after the flags are read: nothing is started.
    r = run("exec", *flag, "-t", "nope/x", "--", "true")
    assert r.stderr.count(words) == 1, r.stderr
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_unknown_options_are_usage_errors_naming_them() -> None:
    r = run("exec", "--stael", "--", "true")
    assert r.returncode == 2
    assert "No such option: --stael" in r.stderr and "--steal" in r.stderr  # did you mean
    assert "command not found" not in r.stderr
    # After the program's name, options are the program's own.
    r = run("exec", "-t", "nope/x", "ls", "--stael")
    assert "target.path: 'nope/x'" in r.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["exec"], ["ls"], ["port-forward"], ["verify-config"], ["agent", "install"],
     ["agent", "status"], ["completions"], ["schema"]],
)  # fmt: skip
def test_dash_h_is_help_everywhere(command: list[str]) -> None:
    r = run(*command, "-h")
    assert r.returncode == 0, r.stderr
    assert "Usage: mirrord" in r.stdout


# What each shell's script sends back to mirrord when the user presses Tab after `--st`.
COMPLETION_ASKS = {
    "bash": {"COMP_WORDS": "mirrord exec --st", "COMP_CWORD": "2"},
    "zsh": {"_TYPER_COMPLETE_ARGS": "mirrord exec --st"},
    "fish": {
        "_TYPER_COMPLETE_ARGS": "mirrord exec --st",
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
    },
}


@pytest.mark.parametrize("shell", sorted(COMPLETION_ASKS))
def test_completions_scripts_and_answers(shell: str) -> None:
    r = run("completions", shell)
    assert r.returncode == 0 and f"complete_{shell}" in r.stdout
    answer = run(env={"_MIRRORD_COMPLETE": f"complete_{shell}", **COMPLETION_ASKS[shell]})
    offered = re.findall(r"--steal(?:-probes)?(?![\w-])", answer.stdout)
    assert offered == ["--steal", "--steal-probes"], answer.stdout


def test_upstream_optional_values_are_rewritten_for_click() -> None:
    valued = {"-t", "--target", "-n"}.__contains__
    assert normalize(["-f", "--", "ls"], valued) == [
        f"--config-file={DEFAULT_CONFIG_FILE}",
        "--",
        "ls",
    ]
    assert normalize(["-f", "-t", "pod/x", "ls"], valued) == [
        f"--config-file={DEFAULT_CONFIG_FILE}", "-t", "pod/x", "ls",
    ]  # fmt: skip
    assert normalize(["-f", "m.json", "ls", "-f"], valued) == [
        "--config-file",
        "m.json",
        "ls",
        "-f",
    ]
    assert normalize(["-c", "-t", "-c", "x"], valued) == [
        "--accept-invalid-certificates=true", "-t", "-c", "x",
    ]  # fmt: skip
    assert normalize(["-c=false", "--", "-c"], valued) == [
        "--accept-invalid-certificates=false", "--", "-c",
    ]  # fmt: skip


def test_dash_f_alone_reads_the_default_config_file(tmp_path: Path) -> None:
    (tmp_path / ".mirrord").mkdir()
    (tmp_path / ".mirrord" / "mirrord.json").write_text('{"target": "nope/x"}')
    r = run("exec", "-f", "--", "true", cwd=tmp_path)
    assert r.returncode == 2 and "mirrord.json: target: 'nope/x'" in r.stderr, r.stderr


# (files to write, arguments, what stderr must say, exit code)
BOM_JSON = b'\xef\xbb\xbf{"target": "nope/x"}'
BAD_INPUTS: list[tuple[dict[str, bytes], list[str], str, int]] = [
    ({"k": b""}, ["ls", "--kubeconfig", "k"], "kubeconfig k: the file is empty", 1),
    ({"k": b"- a\n- b\n"}, ["ls", "--kubeconfig", "k"], "expected a mapping of settings", 1),
    ({"k": b"apiVersion: v1\nclusters: [\n"}, ["ls", "--kubeconfig", "k"],
     "kubeconfig k: not valid YAML at line 3", 1),
    ({"k": b"contexts: 5\n"}, ["ls", "--kubeconfig", "k"], "contexts: expected a list", 1),
    ({"k": b"clusters:\n- name: c\n  cluster: {server: 5}\n"}, ["ls", "--kubeconfig", "k"],
     "clusters[0].cluster.server: expected a string", 1),
    ({"k": b"- a\n"}, ["exec", "-t", "pod/x", "--kubeconfig", "k", "--", "true"],
     "expected a mapping of settings", 1),
    ({"m.json": b'{"feature":{"network":{"outgoing":{"filter":{"remote":["tcp://:foo"]}}}}}'},
     ["exec", "-f", "m.json", "--", "true"],
     "feature.network.outgoing.filter.remote[0]: 'tcp://:foo': bad port 'foo'", 2),
    ({"m.json": b'{"feature":{"network":{"outgoing":{"filter":{"local":["1.2.3.4:99999"]}}}}}'},
     ["exec", "-f", "m.json", "--", "true"], "filter.local[0]: '1.2.3.4:99999': port out", 2),
    ({"m.json": b'{"feature":{"fs":{"read_only":["(unclosed"]}}}'},
     ["exec", "-f", "m.json", "--", "true"], "feature.fs.read_only: bad regex '(unclosed'", 2),
    ({"m.json": b'{"feature":{"network":{"incoming":{"http_filter":{"header_filter":"(x"}}}}}'},
     ["exec", "-f", "m.json", "--", "true"], "http_filter.header_filter: bad regex '(x'", 2),
    ({"m.json": b'{"feature":{"network":{"dns":{"filter":{"local":["a:b"]}}}}}'},
     ["exec", "-f", "m.json", "--", "true"], "feature.network.dns.filter.local[0]: 'a:b'", 2),
    ({"m.json": b'{"feature":{"network":{"outgoing":{"unix_streams":"[x"}}}}'},
     ["exec", "-f", "m.json", "--", "true"], "outgoing.unix_streams[0]: bad regex", 2),
    ({"m.json": BOM_JSON}, ["exec", "-f", "m.json", "--", "true"],
     "m.json: target: 'nope/x'", 2),  # the BOM is skipped; the next error is the target
    ({"m.json": b"[1, 2]"}, ["exec", "-f", "m.json", "--", "true"],
     "the top level must be an object of settings", 2),
    ({}, ["exec", "-f", "missing.json", "--", "true"], "missing.json: file not found", 2),
    ({}, ["exec", "-t", "pid/abc", "--", "true"], "a local process target is pid/PID", 2),
    ({}, ["exec", "--agent-address", "nonsense", "--", "true"],
     "--agent-address nonsense: expected HOST:PORT", 2),
    ({}, ["exec", "--agent-address", "h:99999", "--", "true"], "bad port '99999'", 2),
    ({}, ["exec", "-c=maybe", "--", "true"], "expected true or false, got 'maybe'", 2),
    ({}, ["exec", "--fs-mode", "rw", "--", "true"], "feature.fs", 2),
    ({}, ["exec", "--agent-startup-timeout", "soon", "--", "true"], "Invalid value for", 2),
    ({}, ["exec"], "no program given", 2),
    ({}, ["ls", "-o", "xml"], "--output must be one of json, yaml, text", 2),
    ({}, ["ls", "-t", "podz"], "unknown target type 'podz'", 2),
    ({}, ["ls"], "no kubeconfig at /nonexistent/kubeconfig", 1),
    ({}, ["verify-config", "missing.json"], "missing.json: file not found", 1),
    ({"m.json": b'{"a" 1}'}, ["verify-config", "m.json"], "m.json: line 1, column 6", 1),
    ({}, ["completions", "tcsh"], "unsupported shell 'tcsh'", 2),
    ({}, ["exec", "--explain=/nonexistent/dir/t.jsonl", "--", "true"],
     "--explain: cannot write /nonexistent/dir/t.jsonl", 2),
    ({}, ["explain", "missing.jsonl"], "missing.jsonl: No such file", 1),
    ({"t.jsonl": b"{nope"}, ["explain", "t.jsonl"], "t.jsonl: line 1: not JSON", 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "args", "says", "code"), BAD_INPUTS, ids=[" ".join(c[1]) for c in BAD_INPUTS]
)
def test_bad_input_gets_a_message_and_no_traceback(
    files: dict[str, bytes], args: list[str], says: str, code: int, tmp_path: Path
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    r = run(*args, cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr, r.stderr
    assert r.returncode == code, r.stderr


def test_env_file_problems_are_named_before_the_agent(tmp_path: Path) -> None:
    (tmp_path / "x.env").write_text("GOOD=1\nthis is not a pair\n")
    r = run("exec", "--env-file", "x.env", "-t", "nope/x", "--", "true", cwd=tmp_path)
    assert "Traceback" not in r.stderr and r.returncode == 2, r.stderr


def test_verify_config_ide_json_is_upstreams_shape(tmp_path: Path) -> None:
    good = tmp_path / "m.json"
    good.write_text('{"target": {"path": "deployment/web/container/app", "namespace": "shop"}}')
    r = run("verify-config", "--ide", str(good))
    import json

    out = json.loads(r.stdout)
    assert r.returncode == 0
    assert out["type"] == "Success"
    assert out["config"] == {"path": {"deployment": "web", "container": "app"},
                             "namespace": "shop"}  # fmt: skip
    assert "pod" in out["compatible_target_types"] and "resolved_config" not in out
    r = run("verify-config", "--ide", "--resolved", str(good))
    assert json.loads(r.stdout)["resolved_config"]["target"]["namespace"] == "shop"
    bad = tmp_path / "bad.json"
    bad.write_text('{"feature": {"fs": {"read_only": ["("]}}}')
    r = run("verify-config", "--ide", str(bad))
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["type"] == "Fail"  # upstream's exit code for the IDE
    assert "feature.fs.read_only: bad regex" in out["errors"][0]
    r = run("verify-config", str(bad))
    assert r.returncode == 1 and "feature.fs.read_only: bad regex" in r.stderr


def test_agent_address_with_a_kubernetes_target_is_refused() -> None:
    # It used to open a targetless session on that agent, silently.
    r = run("exec", "--agent-address", "127.0.0.1:1", "-t", "pod/x", "--", "true",
            env={"MIRRORD_AGENT_TOKEN": "t"})  # fmt: skip
    assert r.returncode == 2 and "takes pid/N targets only" in r.stderr, r.stderr


@pytest.mark.root
def test_mirrord_timing_says_where_the_start_up_goes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a local agent)")
    r = run("exec", "-t", "targetless", "--", "true", env={"MIRRORD_TIMING": "1"})
    assert r.returncode == 0, r.stderr
    steps = [line.split("ms  ", 1)[1].split("  ")[0].strip() for line in r.stderr.splitlines()
             if line.startswith("mirrord: timing:")]  # fmt: skip
    # The local agent starts beside the config: its steps may come before or after it.
    beside = ["local agent spawned", "local agent listening"]
    assert [s for s in steps if s not in beside] == [
        "python start-up, CLI imports", "config loaded", "local agent started",
        "agent session opened", "environment fetched", "features built", "program ran",
        "session closed, agent stopped",
    ]  # fmt: skip
    assert steps[1] == "local agent spawned"  # before click has read the options
    assert steps.index("local agent listening") < steps.index("local agent started")
