"""Helpers shared by the agent tests (conftest.py cannot be imported under importlib mode)."""

import subprocess
import time
from dataclasses import dataclass

TOKEN = "test-token-0123456789"

TARGET_ENV = {"FOO": "bar", "BAZ": "1", "EQ": "a=b=c", "EMPTY": "", "SPACED": "x y"}


@dataclass
class Target:
    pid: int
    hostname: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]


def _wait_for_exec(pid: int, comm: str, timeout: float = 5.0) -> None:
    # unshare and sh exec into `sleep` in place, so the PID stays the same; only once comm
    # says `sleep` are the hostname set and the final environment in /proc/PID/environ.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    return
        except FileNotFoundError:
            break
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} did not exec {comm}")


def spawn_target(hostname: str) -> Target:
    env_args = [f"{k}={v}" for k, v in TARGET_ENV.items()]
    quoted = " ".join(f"'{a}'" for a in env_args)
    process = subprocess.Popen(
        [
            "unshare",
            "--net",
            "--uts",
            "sh",
            "-c",
            f"hostname {hostname} && exec env -i {quoted} sleep 600",
        ]
    )
    try:
        _wait_for_exec(process.pid, "sleep")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return Target(process.pid, hostname, dict(TARGET_ENV), process)
