"""Real tests of mirrord.testpod (as root): namespaces, env, files, network, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod, TestPodError, create_pod, sweep_stale

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

ROOT = Path(__file__).resolve().parents[2]


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
        return body


def _leftovers(pod_netns: str, links: list[str]) -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if pod_netns in netns:
        found.append(f"netns {pod_netns}")
    found += [f"link {n}" for n in links if Path(f"/sys/class/net/{n}").exists()]
    if Path(f"/etc/netns/{pod_netns}").exists():
        found.append(f"/etc/netns/{pod_netns}")
    mountinfo = Path("/proc/self/mountinfo").read_text()
    if "mirrord-testpod" in mountinfo or pod_netns in mountinfo:
        found.append("mount")
    return found


def test_main_process_is_in_the_pods_namespaces(pod: Pod) -> None:
    for kind in ("net", "uts", "mnt"):
        assert _ns(pod.main_pid, kind) != _ns("self", kind), kind
    pod_net = os.stat(f"/run/netns/{pod.netns}").st_ino
    assert os.stat(f"/proc/{pod.main_pid}/ns/net").st_ino == pod_net
    # The main pid is the service itself, not a wrapper (ip, nsenter, unshare, a shell).
    cmdline = Path(f"/proc/{pod.main_pid}/cmdline").read_bytes().split(b"\0")
    assert b"http.server" in b" ".join(cmdline)
    assert Path(f"/proc/{pod.main_pid}/exe").resolve().name.startswith("python3")


def test_environ_is_exactly_the_pods(pod: Pod) -> None:
    raw = Path(f"/proc/{pod.main_pid}/environ").read_bytes()
    env = dict(kv.split("=", 1) for kv in raw.decode().split("\0") if kv)
    assert env == {"APP_MODE": "pod", "DB_URL": "postgres://db:5432/shop"}


def test_hostname_and_files_are_the_pods_only(pod: Pod) -> None:
    root = Path(f"/proc/{pod.main_pid}/root")
    assert (root / "srv/app/config.yaml").read_bytes() == b"greeting: from-the-pod\n"
    assert (root / "etc/hostname").read_text() == "checkout-7f9c\n"
    assert f"{pod.address}\tcheckout-7f9c" in (root / "etc/hosts").read_text()
    assert (root / "etc/resolv.conf").read_text() == f"nameserver {pod.address}\n"
    # The host sees none of it.
    assert not Path("/srv/app/config.yaml").exists()
    assert Path("/etc/hostname").read_text() != "checkout-7f9c\n"
    assert os.uname().nodename != "checkout-7f9c"
    # A process run in the pod sees the same.
    res = pod.run(["sh", "-c", "hostname; cat /srv/app/config.yaml; ls /srv"], check=True)
    assert res.stdout == b"checkout-7f9c\ngreeting: from-the-pod\napp\n"
    # `ip netns exec` users get the pod's /etc files too.
    assert Path(f"/etc/netns/{pod.netns}/resolv.conf").read_text() == f"nameserver {pod.address}\n"


def test_service_answers_from_host_and_inside(pod: Pod) -> None:
    assert _get(pod.url) == b"pod"
    code = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{pod.port}/').read())"
    res = pod.run([sys.executable, "-c", code])
    assert res.stdout.strip() == b"b'pod'", res.stderr
    ip = pod.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], check=True).stdout.decode()
    assert f"{pod.address}/24" in ip


def test_two_pods_talk_over_one_bridge(network: Network) -> None:
    target = network.add_pod("target", env={"ROLE": "target"})
    service = network.add_pod("orders", env={}, hosts_entries={"target.local": target.address})
    code = "import urllib.request as u; print(u.urlopen('http://target.local:8080/').read())"
    res = service.run([sys.executable, "-c", code], check=True)
    assert res.stdout == b"b'pod'\n"
    # No default route: nothing outside the bridge subnet is reachable from a pod.
    route = service.run(["ip", "route"], check=True).stdout.decode()
    assert "default" not in route


def test_custom_argv_spawn_and_exit(network: Network, tmp_path: Path) -> None:
    p = network.add_pod(
        "sleeper", env={"A": "1"}, argv=["sleep", "30"], files={"/opt/x/y/z.txt": "deep"}
    )
    assert Path(f"/proc/{p.main_pid}/exe").resolve() == Path("/usr/bin/sleep")
    assert Path(f"/proc/{p.main_pid}/root/opt/x/y/z.txt").read_text() == "deep"
    proc = p.spawn(["sleep", "30"], stdout=subprocess.DEVNULL)
    # nsenter execs: the Popen pid is the program, inside the pod's namespaces.
    deadline = time.monotonic() + 5
    while _ns(proc.pid, "mnt") == _ns("self", "mnt") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _ns(proc.pid, "mnt") == _ns(p.main_pid, "mnt")
    assert p.run(["sh", "-c", "echo $A $PATH"]).stdout.startswith(b"1 /usr/local/sbin")
    assert p.run(["env"], env={"ONLY": "me"}).stdout == b"ONLY=me\n"
    p.close()
    assert proc.poll() is not None


def test_files_under_missing_top_level_dir_leave_nothing(network: Network) -> None:
    top = Path("/mrdt-test-app")
    assert not top.exists()
    p = network.add_pod("app", files={"/mrdt-test-app/main.py": b"print('hi')\n"})
    assert Path(f"/proc/{p.main_pid}/root/mrdt-test-app/main.py").read_bytes() == b"print('hi')\n"
    assert list(top.iterdir()) == []  # only an empty mount point is visible on the host
    p.close()
    assert not top.exists()


def test_failed_start_cleans_up(network: Network) -> None:
    before = set(os.listdir("/run/netns")), set(os.listdir("/sys/class/net"))
    with pytest.raises(TestPodError, match="No such file"):
        network.add_pod("bad", argv=["/nonexistent/program"])
    assert (set(os.listdir("/run/netns")), set(os.listdir("/sys/class/net"))) == before
    assert network.pods == []


def test_close_removes_everything_and_is_idempotent() -> None:
    t0 = time.monotonic()
    pod = create_pod("short-lived", env={"K": "V"}, files={"/srv/data/a": b"1"})
    created = time.monotonic() - t0
    pid, netns, links = pod.main_pid, pod.netns, [pod.veth, pod.network.bridge]
    assert _get(pod.url) == b"pod"
    t1 = time.monotonic()
    pod.close()
    closed = time.monotonic() - t1
    pod.close()
    pod.network.close()
    assert _leftovers(netns, links) == []
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(f"/run/mirrord-testpod/pod-{pod.id}.json").exists()
    assert created < 1.0 and closed < 1.0, (created, closed)
    with pytest.raises(TestPodError):
        pod.run(["true"])


def test_context_manager_cleans_up_on_exception() -> None:
    with pytest.raises(ZeroDivisionError), Network() as net:
        p = net.add_pod("boom")
        netns, links = p.netns, [p.veth, net.bridge]
        _ = 1 / 0
    assert _leftovers(netns, links) == []


_CREATOR = textwrap.dedent(
    """
    import json, sys, time
    from mirrord.testpod import Network
    net = Network()
    pod = net.add_pod("victim", files={"/mrdt-sweep-test/f": b"x"})
    print(json.dumps({"netns": pod.netns, "links": [pod.veth, net.bridge],
                      "pid": pod.main_pid}), flush=True)
    time.sleep(60)
    """
)


def _start_creator() -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CREATOR], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    info: dict[str, object] = json.loads(proc.stdout.readline())
    return proc, info


def test_sigterm_to_creator_cleans_up() -> None:
    proc, info = _start_creator()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert _leftovers(str(info["netns"]), list(info["links"])) == []  # type: ignore[arg-type]
    assert not Path(f"/proc/{info['pid']}").exists()
    assert not Path("/mrdt-sweep-test").exists()


def test_sweep_removes_leftovers_of_a_killed_creator() -> None:
    proc, info = _start_creator()
    netns, links = str(info["netns"]), list(info["links"])  # type: ignore[call-overload]
    proc.kill()
    proc.wait()
    assert _leftovers(netns, links) != []  # SIGKILL: nothing could clean up
    assert Path(f"/proc/{info['pid']}").exists()
    removed = sweep_stale()
    assert removed
    assert _leftovers(netns, links) == []
    deadline = time.monotonic() + 5
    while Path(f"/proc/{info['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the orphan is reaped by init
    assert not Path(f"/proc/{info['pid']}").exists()
    assert not Path("/mrdt-sweep-test").exists()


def test_sweep_leaves_live_pods_alone(pod: Pod) -> None:
    sweep_stale()
    assert _get(pod.url) == b"pod"
    assert Path(f"/run/netns/{pod.netns}").exists()


def test_needs_root_with_a_clear_error() -> None:
    code = (
        "import os; os.setgid(65534); os.setuid(65534)\n"
        "from mirrord.testpod import Network\n"
        "try:\n    Network()\nexcept PermissionError as e:\n    print('PermissionError:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "PermissionError: mirrord.testpod needs root" in res.stdout, res.stderr
