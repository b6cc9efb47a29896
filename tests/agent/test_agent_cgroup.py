"""Container ID -> PID matching over realistic /proc/PID/cgroup texts (pure)."""

from pathlib import Path

import pytest

from mirrord.agent.cgroup import (
    cgroup_matches_container,
    container_ids_in_cgroup,
    find_container_pid,
    normalize_container_id,
    pick_container_root,
)

CID = "3f4a9c2d1b0e8f7a6c5d4e3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
OTHER = "aa" * 32
POD = "pod8b5b1f6e-2d3c-4a5b-9c8d-7e6f5a4b3c2d"
POD_SYSTEMD = "pod8b5b1f6e_2d3c_4a5b_9c8d_7e6f5a4b3c2d"

SAMPLES = {
    "v2 containerd cgroupfs": f"0::/kubepods/besteffort/{POD}/{CID}\n",
    "v2 containerd systemd": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-{POD_SYSTEMD}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v2 cri-o systemd": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-{POD_SYSTEMD}.slice/crio-{CID}.scope\n"
    ),
    "v2 docker systemd": f"0::/system.slice/docker-{CID}.scope\n",
    "v2 podman": f"0::/machine.slice/libpod-{CID}.scope/container\n",
    "v2 relative to the agent's cgroupns": f"0::/../../besteffort/{POD}/{CID}\n",
    "v1 docker cgroupfs": "".join(
        f"{n}:{c}:/docker/{CID}\n"
        for n, c in [(12, "pids"), (11, "memory"), (4, "cpu,cpuacct"), (1, "name=systemd")]
    ),
    "v1 kubepods cgroupfs": (
        f"11:memory:/kubepods/burstable/{POD}/{CID}\n"
        f"10:cpu,cpuacct:/kubepods/burstable/{POD}/{CID}\n"
        f"1:name=systemd:/kubepods/burstable/{POD}/{CID}\n"
        "0::/\n"
    ),
    "v1 containerd systemd (colons in path)": (
        f"12:memory:/system.slice/containerd.service/kubepods-besteffort-{POD_SYSTEMD}.slice"
        f":cri-containerd:{CID}\n"
        "0::/system.slice/containerd.service\n"
    ),
}


@pytest.mark.parametrize("text", SAMPLES.values(), ids=SAMPLES.keys())
def test_matches_every_layout(text: str) -> None:
    assert cgroup_matches_container(text, CID)
    assert not cgroup_matches_container(text, OTHER)
    assert CID in container_ids_in_cgroup(text)


@pytest.mark.parametrize(
    "text",
    [
        "0::/\n",
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        "4:memory:/process_api/a1f39e4e601f81c286742975dd974be4\n0::/\n",
        f"0::/kubepods/besteffort/{POD}\n",  # the pod's cgroup, not a container's
        # CRI-O's monitor carries the container's ID but is not in the container.
        f"0::/kubepods.slice/kubepods-besteffort-{POD_SYSTEMD}.slice/crio-conmon-{CID}.scope\n",
        "garbage without colons\n",
    ],
)
def test_no_false_matches(text: str) -> None:
    assert not cgroup_matches_container(text, CID)


def test_container_id_forms() -> None:
    text = SAMPLES["v2 containerd systemd"]
    for form in (f"containerd://{CID}", f"cri-o://{CID}", f"docker://{CID}", CID.upper()):
        assert cgroup_matches_container(text, form), form
    assert cgroup_matches_container(text, CID[:12])  # the short form docker ps prints
    assert not cgroup_matches_container(text, CID[:6])  # too short to be unambiguous
    assert not cgroup_matches_container(text, "")
    assert normalize_container_id(f" containerd://{CID.upper()} ") == CID


def test_pick_container_root() -> None:
    assert pick_container_root({}) is None
    # 100 is the container's init (parent 90 is the shim, outside); 101, 102 its children.
    assert pick_container_root({101: 100, 100: 90, 102: 101}) == 100
    assert pick_container_root({7: 1, 5: 1}) == 5


def _fake_proc(root: Path, pid: int, ppid: int, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(f"{pid} (odd ) name) S {ppid} {pid} {pid} 0 -1\n")


def test_find_container_pid_in_fake_proc(tmp_path: Path) -> None:
    cg = SAMPLES["v2 containerd cgroupfs"]
    _fake_proc(tmp_path, 1, 0, "0::/init.scope\n")
    _fake_proc(tmp_path, 900, 1, "0::/system.slice/containerd.service\n")  # shim
    _fake_proc(tmp_path, 1000, 900, cg)
    _fake_proc(tmp_path, 1001, 1000, cg)
    _fake_proc(tmp_path, 1200, 900, f"0::/kubepods/besteffort/{POD}/{OTHER}\n")
    (tmp_path / "self").mkdir()  # non-numeric entries are ignored
    assert find_container_pid(CID, proc=str(tmp_path)) == 1000
    assert find_container_pid(OTHER, proc=str(tmp_path)) == 1200
    assert find_container_pid("bb" * 32, proc=str(tmp_path)) is None
