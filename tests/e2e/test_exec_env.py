"""`mirrord exec --target pid/N` end to end: real CLI, real local agent, real pod."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
POD_ENV = {
    "APP_MODE": "pod",
    "DB_URL": "postgres://db:5432/shop",
    "SECRET_TOKEN": "s3cr3t",
    "FEATURE_X": "on",
    "PATH": "/pod/bin:/usr/bin:/bin",
    "HOME": "/home/pod",
}
# Variables the test runner itself has; the pod does not.
LOCAL_ONLY = "MIRRORD_TEST_LOCAL_ONLY"


@pytest.fixture
def target(network: Network) -> Pod:
    return network.add_pod("orders-5d8f", hostname="orders-5d8f", env=POD_ENV)


def mirrord(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: object):  # type: ignore[no-untyped-def]
    full_env = dict(os.environ, **{LOCAL_ONLY: "yes"})
    full_env.update(env or {})
    return subprocess.run(  # type: ignore[call-overload]
        [MIRRORD, *args], capture_output=True, text=True, timeout=timeout, env=full_env, **kw
    )


def parse_env(out: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def envprinters(programs: dict[str, Path]) -> dict[str, list[str]]:
    return {
        "python3": [
            PY,
            "-c",
            "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')",
        ],
        "sh": ["/bin/sh", "-c", "env"],
        "busybox": ["busybox", "env"],
        "static C": [str(programs["envprint"])],
        "static Go": [str(programs["envprint-go"])],
    }


def hostname_of(kind: str, out: str, programs: dict[str, Path]) -> str | None:
    return parse_env(out).get("HOSTNAME_UNAME")


@pytest.mark.parametrize("kind", ["python3", "sh", "busybox", "static C", "static Go"])
def test_every_kind_of_program_sees_the_pods_environment(
    kind: str, target: Pod, programs: dict[str, Path]
) -> None:
    cmd = envprinters(programs)[kind]
    r = mirrord("exec", "--target", f"pid/{target.main_pid}", "--", *cmd)
    assert r.returncode == 0, r.stderr
    env = parse_env(r.stdout)
    for name in ("APP_MODE", "DB_URL", "SECRET_TOKEN", "FEATURE_X"):
        assert env[name] == POD_ENV[name], (kind, name)
    # Local variables the pod does not override are still there (upstream merges).
    assert env[LOCAL_ONLY] == "yes"
    # Default exclusions: PATH and HOME stay local.
    assert env["PATH"] == os.environ["PATH"]
    assert env["HOME"] != "/home/pod"


@pytest.mark.parametrize("kind", ["static C", "static Go"])
def test_static_binaries_see_the_pods_hostname(
    kind: str, target: Pod, programs: dict[str, Path]
) -> None:
    cmd = envprinters(programs)[kind]
    r = mirrord("exec", "--target", f"pid/{target.main_pid}", "--", *cmd)
    assert parse_env(r.stdout)["HOSTNAME_UNAME"] == "orders-5d8f"


def test_hostname_feature_can_be_turned_off(target: Pod, tmp_path: Path) -> None:
    cfg = tmp_path / "mirrord.json"
    cfg.write_text(json.dumps({"feature": {"hostname": False}}))
    r = mirrord("exec", "-f", str(cfg), "-t", f"pid/{target.main_pid}", "--", "uname", "-n")
    assert r.stdout.strip() == os.uname().nodename


def test_include_exclude_override_from_the_config_file(target: Pod, tmp_path: Path) -> None:
    cfg = tmp_path / "mirrord.yaml"
    cfg.write_text(
        f"target: pid/{target.main_pid}\n"
        "feature:\n"
        "  env:\n"
        "    exclude: SECRET_*;FEATURE_X\n"
        "    override:\n"
        "      DB_URL: sqlite:///local.db\n"
        "      EXTRA: added\n"
    )
    r = mirrord("exec", "-f", str(cfg), "--", "env")
    assert r.returncode == 0, r.stderr
    env = parse_env(r.stdout)
    assert env["APP_MODE"] == "pod"
    assert env["DB_URL"] == "sqlite:///local.db"
    assert env["EXTRA"] == "added"
    assert "SECRET_TOKEN" not in env and "FEATURE_X" not in env


def test_include_flag_keeps_only_the_named_remote_variables(target: Pod) -> None:
    r = mirrord("exec", "-t", f"pid/{target.main_pid}", "-s", "APP_*;DB_URL", "--", "env")
    env = parse_env(r.stdout)
    assert env["APP_MODE"] == "pod" and env["DB_URL"] == POD_ENV["DB_URL"]
    assert "SECRET_TOKEN" not in env and "FEATURE_X" not in env


def test_env_feature_off_gives_the_local_environment(target: Pod, tmp_path: Path) -> None:
    cfg = tmp_path / "mirrord.toml"
    cfg.write_text(f'target = "pid/{target.main_pid}"\n[feature]\nenv = false\n')
    r = mirrord("exec", "-f", str(cfg), "--", "env")
    env = parse_env(r.stdout)
    assert "APP_MODE" not in env and env[LOCAL_ONLY] == "yes"


def test_config_file_from_the_environment_variable(target: Pod, tmp_path: Path) -> None:
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"target": {"path": f"pid/{target.main_pid}"}}))
    r = mirrord("exec", "--", "env", env={"MIRRORD_CONFIG_FILE": str(cfg)})
    assert parse_env(r.stdout)["APP_MODE"] == "pod"


def test_exit_code_and_signal_are_the_programs(target: Pod) -> None:
    r = mirrord("exec", "-t", f"pid/{target.main_pid}", "--", "sh", "-c", "exit 42")
    assert r.returncode == 42
    r = mirrord("exec", "-t", f"pid/{target.main_pid}", "--", "sh", "-c", "kill -USR1 $$")
    assert r.returncode == -signal.SIGUSR1


def _processes_with_env(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_no_agent_is_left_behind(target: Pod) -> None:
    # The local agent inherits mirrord's environment: a marker finds it (and only ours,
    # even when other test runs share the machine).
    marker = f"MIRRORD_TEST_RUN=agent-left-{os.getpid()}-{time.monotonic_ns()}"
    name, value = marker.split("=", 1)
    seen: list[int] = []
    p = subprocess.Popen(
        [MIRRORD, "exec", "-t", f"pid/{target.main_pid}", "--", "sleep", "1"],
        env=dict(os.environ, **{name: value}),
    )
    time.sleep(0.7)
    seen = _processes_with_env(marker)
    assert p.wait(timeout=30) == 0
    assert len(seen) >= 3  # mirrord, its agent, the program: the marker works
    assert _processes_with_env(marker) == []


def test_targetless_uses_the_agents_own_environment() -> None:
    r = mirrord("exec", "--", "env")
    assert r.returncode == 0, r.stderr
    assert parse_env(r.stdout)[LOCAL_ONLY] == "yes"


@pytest.mark.parametrize(
    ("target_arg", "message"),
    [
        ("pid/999999", "process 999999 does not exist"),
        ("pid/abc", "a local process target is pid/PID"),
        ("pod/checkout", "no Kubernetes configuration: no kubeconfig at /nonexistent/kubeconfig"),
        ("banana/x", '\'banana/x\': expected "targetless", "pid/PID"'),
    ],
)
def test_bad_targets_are_clear_errors(target_arg: str, message: str) -> None:
    r = mirrord(
        "exec", "-t", target_arg, "--", "true", env={"KUBECONFIG": "/nonexistent/kubeconfig"}
    )
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "mirrord.json"
    cfg.write_text('{"feature": {"env": {"inclde": "A"}}}')
    r = mirrord("exec", "-f", str(cfg), "--", "true")
    assert r.returncode == 2
    assert "feature.env.inclde: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_without_root_the_error_gives_the_sudo_command(target: Pod) -> None:
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MIRRORD, "exec",
         "-t", f"pid/{target.main_pid}", "--", "true"],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert r.returncode == 1
    assert "needs root" in r.stderr
    assert f"sudo -E {MIRRORD} exec -t pid/{target.main_pid} -- true" in r.stderr


# --- a running agent, reached with --agent-address --------------------------------------


@pytest.fixture
def agent() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    token = "test-token-" + os.urandom(8).hex()
    p = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--ping-timeout", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, MIRRORD_AGENT_TOKEN=token),
    )
    assert p.stdout is not None
    line = p.stdout.readline().split()
    assert line[0] == "MIRRORD_AGENT_LISTENING"
    try:
        yield p, line[1], token
    finally:
        p.kill()
        p.wait()


def test_running_agent_with_the_right_token(target: Pod, agent) -> None:  # type: ignore[no-untyped-def]
    _, address, token = agent
    r = mirrord(
        "exec", "--agent-address", address, "-t", f"pid/{target.main_pid}", "--", "env",
        env={"MIRRORD_AGENT_TOKEN": token},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert parse_env(r.stdout)["APP_MODE"] == "pod"
    assert "MIRRORD_AGENT_TOKEN" not in parse_env(r.stdout)  # mirrord's secret, not the program's
    assert token not in r.stdout


def test_running_agent_refuses_a_wrong_token(target: Pod, agent) -> None:  # type: ignore[no-untyped-def]
    _, address, _ = agent
    r = mirrord(
        "exec", "--agent-address", address, "-t", f"pid/{target.main_pid}", "--", "true",
        env={"MIRRORD_AGENT_TOKEN": "wrong"},
    )  # fmt: skip
    assert r.returncode == 1
    assert "token" in r.stderr and "refused" in r.stderr


def test_unreachable_agent_is_a_clear_error(target: Pod) -> None:
    r = mirrord(
        "exec", "--agent-address", "127.0.0.1:9", "--agent-startup-timeout", "2",
        "-t", f"pid/{target.main_pid}", "--", "true", env={"MIRRORD_AGENT_TOKEN": "x"},
    )  # fmt: skip
    assert r.returncode == 1
    assert "could not reach the agent at 127.0.0.1:9" in r.stderr


def test_agent_dying_mid_session_stops_the_program_with_a_clear_message(
    target: Pod,
    agent,  # type: ignore[no-untyped-def]
) -> None:
    proc, address, token = agent
    marker = f"mirrord-e2e-{os.getpid()}-{time.monotonic_ns()}"
    m = subprocess.Popen(
        [MIRRORD, "exec", "--agent-address", address, "-t", f"pid/{target.main_pid}", "--",
         "bash", "-c", f"echo started; exec -a {marker} sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, MIRRORD_AGENT_TOKEN=token),
    )  # fmt: skip
    assert m.stdout is not None
    assert m.stdout.readline().strip() == "started"
    t0 = time.monotonic()
    proc.kill()
    _, err = m.communicate(timeout=20)
    assert m.returncode == 1
    assert "lost the agent" in err
    assert time.monotonic() - t0 < 10
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    assert left.returncode == 1, "the program must not outlive the session"


def test_mirrords_own_grpc_tuning_is_not_the_programs(target: Pod) -> None:
    """mirrord sets GRPC_EXPERIMENTS for itself (mirrord/__init__.py); a program that uses
    gRPC must not inherit it, but keeps the user's own value."""
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    argv = [MIRRORD, "exec", "-t", f"pid/{target.main_pid}", "--", "env"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=base)
    assert r.returncode == 0, r.stderr
    assert "GRPC_EXPERIMENTS" not in parse_env(r.stdout)
    mine = dict(base, GRPC_EXPERIMENTS="-some_experiment")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=mine)
    assert parse_env(r.stdout).get("GRPC_EXPERIMENTS") == "-some_experiment", r.stderr
