"""The agent's iptables-legacy on a read-only root (the DaemonSet's): its lock file goes
where XTABLES_LOCKFILE says (the manifest points it into the pod's scratch emptyDir), so
`iptables-legacy-restore -w` works where /run cannot be written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Pod, create_pod

RESTORE = r"""
import asyncio, sys
from mirrord.agent.incoming.iptables import run_in_netns
script = "*nat\n:MIRRORD-LOCKTEST - [0:0]\nCOMMIT\n"
argv = ["iptables-legacy-restore", "-w", "5", "--noflush"]
try:
    asyncio.run(run_in_netns(int(sys.argv[1]), argv, script))
    print("ok")
except Exception as e:
    print("failed:", e)
"""


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    if os.geteuid() != 0 or shutil.which("iptables-legacy-restore") is None:
        pytest.skip("needs root and iptables-legacy")
    with create_pod("iptlock", argv=["sleep", "600"]) as p:
        yield p


def _restore_on_read_only_run(pod: Pod, lockfile: str | None) -> str:
    """The agent's restore call, in a mount namespace whose /run is read-only."""
    env = {k: v for k, v in os.environ.items() if k != "XTABLES_LOCKFILE"}
    if lockfile is not None:
        env["XTABLES_LOCKFILE"] = lockfile
    inner = f'mount -t tmpfs -o ro tmpfs /run && exec {sys.executable} -c "$0" {pod.main_pid}'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner, RESTORE],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    return r.stdout.strip() or r.stderr.strip()


def test_a_read_only_run_needs_the_lock_file_elsewhere(pod: Pod) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="mirrord-scratch-"))
    try:
        assert _restore_on_read_only_run(pod, None).startswith("failed:")  # /run/xtables.lock
        assert _restore_on_read_only_run(pod, str(scratch / "xtables.lock")) == "ok"
        assert (scratch / "xtables.lock").exists()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rules = pod.run(["iptables-legacy-save", "-t", "nat"], check=True).stdout.decode()
    assert ":MIRRORD-LOCKTEST" in rules  # in the test pod's netns, gone with it
