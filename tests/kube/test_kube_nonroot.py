"""#18: targets that do not run as root, with the agent holding only the capabilities of
its DaemonSet manifest (the fake kubelet enforces both: the target runs as its pod's
runAsUser, the agent with exactly the manifest's capability set)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirrord.kube import manifests as m
from mirrord.testpod import effective_capabilities
from tests.features.incoming.incoming_helpers import mirrord_rules
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_kube_exec import LOCAL_HANDLER, POD_ENV, PY, start_mirrord

# The pod's unix socket server, run as the pod's user: its socket is 0600 in a 0700 dir.
UNIX_SERVER = """
import os, socket
s = socket.socket(socket.AF_UNIX); s.bind("/srv/app/app.sock"); os.chmod("/srv/app/app.sock", 0o600)
s.listen(4)
while True:
    c, _ = s.accept(); c.sendall(b"uid-%d" % os.getuid()); c.close()
"""

# The local program: the pod's env and files as its user sees them, an outgoing connection
# to the pod's own loopback, then one stolen request.
PROGRAM = (
    """
import http.server, os, urllib.request
print("APP_MODE=" + os.environ.get("APP_MODE", "-"))
print("secret=" + open("/srv/app/secret.txt").read())
try:
    open("/srv/app/root-only.txt").read()
    print("root-only=read")
except PermissionError:
    print("root-only=denied")
print("pod=" + urllib.request.urlopen("http://127.0.0.1:8080/", timeout=10).read().decode())
import socket
u = socket.socket(socket.AF_UNIX)
u.connect("/srv/app/app.sock")
print("unix=" + u.recv(100).decode())
"""
    + LOCAL_HANDLER
    + """
server = http.server.HTTPServer(("0.0.0.0", 8080), H)
print("ready", flush=True)
server.handle_request()
"""
)


@pytest.mark.parametrize(
    ("uid", "gid"), [(1000, 1000), (1000650000, 0)], ids=["uid-1000", "openshift-random-uid"]
)
def test_a_non_root_target_with_the_agents_least_privilege(
    cluster: FakeCluster, kubeconfig: Path, tmp_path: Path, uid: int, gid: int
) -> None:
    cluster.namespace("shop")
    pod = cluster.add_pod(
        "app-1",
        "shop",
        env=POD_ENV,
        security={"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True},
        container_spec={"securityContext": {"capabilities": {"drop": ["ALL"]}}},
        files={"/srv/app/secret.txt": b"only-the-app", "/srv/app/root-only.txt": b"root"},
        # Neither root without DAC_OVERRIDE nor anyone else may enter /srv/app: only the
        # target's own credentials reach its files.
        owners={
            "/srv/app": (uid, gid, 0o700),
            "/srv/app/secret.txt": (uid, gid, 0o600),
            "/srv/app/root-only.txt": (0, 0, 0o600),
        },
    )
    assert pod is not None
    pod.wait_listening(8080)
    server = pod.spawn(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                        PY, "-c", UNIX_SERVER])  # fmt: skip
    sock_path = Path(f"/proc/{server.pid}/root/srv/app/app.sock")
    deadline = time.monotonic() + 10
    while not sock_path.exists():
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps({"feature": {"network": {"outgoing": {"unix_streams": "/srv/app/"}}}})
    )
    status = Path(f"/proc/{pod.main_pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status  # the kubelet ran it as uid
    other = cluster.network.add_pod("other", argv=["/bin/sleep", "600"])
    err = tmp_path / "err"
    proc = start_mirrord(
        kubeconfig, "exec", "-n", "shop", "--target", "pod/app-1", "--steal", "-f", str(config),
        "--", PY, "-c", PROGRAM, stderr=err, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        assert lines == [
            "APP_MODE=kube",
            "secret=only-the-app",
            "root-only=denied",
            "pod=pod",
            f"unix=uid-{uid}",
            "ready",
        ], err.read_text()
        # The agent pod ran with exactly the manifest's capabilities, as root.
        agent_pod = next(
            p for (ns, name), p in cluster.backing.items() if name.startswith(m.AGENT_NAME)
        )
        caps = effective_capabilities(agent_pod.main_pid)
        assert caps == set(m.CAPABILITIES), caps
        deadline = time.monotonic() + 30
        while not any(re.search(r"mirrord:steal:8080\b", r) for r in mirrord_rules(pod)):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        get = f"import urllib.request as u; print(u.urlopen('http://{pod.address}:8080/').read())"
        answer = other.run([PY, "-c", get])
        assert answer.stdout.decode().strip() == "b'local'", answer.stderr
        assert proc.wait(30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    assert mirrord_rules(pod) == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
