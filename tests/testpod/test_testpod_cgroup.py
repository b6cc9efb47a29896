"""Test pods with a container ID: a real cgroup v2 scope, removed on close and by the sweep."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from mirrord.agent.cgroup import find_container_pid
from mirrord.testpod import Network, sweep_stale

ROOT = Path(__file__).resolve().parents[2]


def test_container_id_puts_the_main_process_in_a_real_cgroup(network: Network) -> None:
    cid = secrets.token_hex(32)
    pod = network.add_pod("with-cid", argv=["sleep", "60"], container_id=cid)
    assert pod.cgroup is not None and pod.cgroup.endswith(f"cri-containerd-{cid}.scope")
    assert cid in Path(f"/proc/{pod.main_pid}/cgroup").read_text()
    # The agent's own lookup finds the pod's main process by the ID from pod status.
    assert find_container_pid(f"containerd://{cid}") == pod.main_pid
    pod.close()
    assert not Path(pod.cgroup).exists()
    assert not Path(pod.cgroup).parent.exists()


_CREATOR = """
import json, secrets, sys, time
from mirrord.testpod import Network
net = Network()
pod = net.add_pod(argv=["sleep", "60"], container_id=secrets.token_hex(32))
print(json.dumps({"cgroup": pod.cgroup, "pid": pod.main_pid}), flush=True)
time.sleep(60)
"""


def test_sweep_removes_the_cgroup_of_a_killed_creator() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CREATOR], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert Path(info["cgroup"]).is_dir()  # SIGKILL: nothing could clean up
    sweep_stale()
    assert not Path(info["cgroup"]).exists()
