"""No target with a current kube context: targetless in the cluster, as upstream runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster
from tests.kube.test_kube_exec import MIRRORD, PY

# The program connects to a server on the test's side of the pod bridge and prints what
# the server saw as its peer: the agent pod's address when the connection left from the
# cluster, the bridge's own address when it left from this machine.
SCRIPT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    print(s.makefile().readline().strip())
"""


def _peer_server(host: str) -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server((host, 0))

    def serve() -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"{peer[0]}\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIRRORD, "exec", *args], capture_output=True, text=True, timeout=90, env=env
    )


def test_no_target_with_a_kube_context_is_targetless_in_the_cluster(
    cluster: FakeCluster, apiserver: FakeApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    host = cluster.network.host_address
    srv, _ = _peer_server(host)
    port = str(srv.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config of the machine's
    try:
        env["KUBECONFIG"] = str(kubeconfig)  # names a current context
        r = _run(env, "--", PY, "-c", SCRIPT, host, port)
        assert r.returncode == 0, r.stderr
        agent_pods = [p for p in cluster.backing.values() if p.name.startswith("mirrord-agent")]
        assert agent_pods, "no agent pod was started in the cluster"
        assert r.stdout.strip() == agent_pods[0].address  # left from the cluster
        assert any("/portforward" in p for _, p in apiserver.requests)

        # pid/N and an explicit targetless keep their meanings: this machine.
        r = _run(env, "-t", "targetless", "--", PY, "-c", SCRIPT, host, port)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == host, r.stderr

        # No kubeconfig at all: targetless on this machine, as before.
        env["KUBECONFIG"] = str(tmp_path / "none")
        r = _run(env, "--", PY, "-c", SCRIPT, host, port)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == host, r.stderr
    finally:
        srv.close()
