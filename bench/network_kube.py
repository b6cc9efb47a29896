"""Outgoing traffic on the path every Kubernetes session uses, side by side in one run:

- direct: the client in the target's netns;
- gRPC streams: `mirrord exec --target pid/N` with a local agent and MIRRORD_NO_DIRECT=1
  (connections carried by the agent's gRPC streams, no port-forward);
- port-forward: `mirrord exec --target pod/NAME` on the fake cluster: the agent in its
  DaemonSet pod, reached through the fake API server's TLS websocket port-forward, as a
  user's session reaches a remote agent (the fake server is Python: a real kube-apiserver
  and kubelet add their own hops, likely cheaper per byte).

Columns: bulk download over one connection, p50/p99 of a new connection + GET.

Run as root: .venv/bin/python bench/network_kube.py [--mib 128] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.network import CLIENT, SERVERS
from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"


def run(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}…: exit {r.returncode}\n{r.stderr[-2000:]}")
    return r.stdout.split()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    client = [PY, "-c", textwrap.dedent(CLIENT)]
    with FakeApiServer() as api, Network() as net, tempfile.TemporaryDirectory() as tmp:
        cluster = FakeCluster(api, net)
        try:
            service = net.add_pod("svc", argv=http_server_argv(8080, body="service"),
                                  wait_port=8080)  # fmt: skip
            service.spawn([PY, "-c", SERVERS, str(a.mib)])
            service.wait_listening(9000)
            target = cluster.add_pod("target", "default")
            assert isinstance(target, Pod)
            kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
            base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
            ways = {
                "direct": (["ip", "netns", "exec", target.netns], base),
                "gRPC streams (local agent)": (
                    [MIRRORD, "exec", "--target", f"pid/{target.main_pid}", "--"],
                    {**base, "MIRRORD_NO_DIRECT": "1"},
                ),
                "port-forward (fake cluster)": (
                    [MIRRORD, "exec", "-n", "default", "--target", "pod/target", "--"],
                    {**base, "KUBECONFIG": str(kubeconfig)},
                ),
            }
            # Install the agent DaemonSet first: its start is not what is measured.
            kube_prefix, kube_env = ways["port-forward (fake cluster)"]
            run([*kube_prefix, "true"], kube_env)
            rows = []
            for name, (prefix, env) in ways.items():
                bulk = run([*prefix, *client, "bulk", service.address], env)
                lat = run([*prefix, *client, "latency", service.address, str(a.requests)], env)
                mibs = int(bulk[1]) / (1 << 20) / float(bulk[2])
                rows.append((name, mibs, float(lat[1]) * 1000, float(lat[2]) * 1000))
        finally:
            cluster.close()
    direct = rows[0]
    print(f"| | bulk {a.mib} MiB | x direct | p50 new conn+GET | added p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for name, mibs, p50, p99 in rows:
        print(f"| {name} | {mibs:.0f} MiB/s | {mibs / direct[1]:.2f}x | {p50:.2f} ms | "
              f"+{p50 - direct[2]:.2f} ms | {p99:.2f} ms |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
