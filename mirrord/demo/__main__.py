"""`make demo`: a local demo pod, a sample program run plain and under `mirrord exec`.

The pod is a set of namespaces on this machine (mirrord.testpod) running a small HTTP
service with its own environment and hostname. Next to it, an "inventory" service pod that
only the demo pod reaches, by a name only the demo pod's /etc/hosts knows. Everything is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mirrord.testpod import Network, Pod, sweep_stale
from mirrord.testpod.pod import http_server_argv

APP = Path(__file__).with_name("app.py")
# Resolvable only through the demo pod's /etc/hosts; app.py fetches it (same name there).
INVENTORY_NAME = "inventory.shop.svc.cluster.local"
INVENTORY_PORT = 8080
POD_ENV = {
    "SERVICE_NAME": "checkout",
    "DATABASE_URL": "postgres://orders-db.shop.svc.cluster.local:5432/orders",
    "FEATURE_FLAGS": "new-cart;fast-checkout",
    "POD_NAME": "checkout-7f9c",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/app",
}


def _mirrord() -> str:
    exe = Path(sys.executable).with_name("mirrord")
    return str(exe) if exe.exists() else "mirrord"


def main() -> int:
    if os.geteuid() != 0:
        print("the demo creates namespaces and a local agent: run it as root", file=sys.stderr)
        return 1
    sweep_stale()
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    files = {"/srv/checkout/config.yaml": "payment_gateway: sandbox\nmax_cart_items: 50\n"}
    with Network() as net:
        inventory = net.add_pod(
            "inventory",
            argv=http_server_argv(INVENTORY_PORT, body="12 carts in stock"),
            wait_port=INVENTORY_PORT,
        )
        # Replies to this machine go nowhere, so only the demo pod (same bridge) reaches it.
        inventory.run(["ip", "route", "add", "blackhole", f"{net.host_address}/32"], check=True)
        pod = net.add_pod(
            name="checkout-7f9c",
            hostname="checkout-7f9c",
            env=POD_ENV,
            files=files,
            hosts_entries={INVENTORY_NAME: inventory.address},
        )
        print(f"demo pod: {pod.name}  pid {pod.main_pid}  address {pod.address}")
        print("          a small HTTP service with its own env, hostname and files")
        print(f"          + {INVENTORY_NAME} (only the demo pod resolves and reaches it)\n")
        print("$ unshare --net python3 app.py     (plain, on this machine, offline)")
        # Without a network of its own, the plain run's lookup of the pod-only name never
        # reaches this machine's real nameserver (the demo talks only to its own pods).
        subprocess.run(["unshare", "--net", python, str(APP)], check=True)
        cmd = [_mirrord(), "exec", "--target", f"pid/{pod.main_pid}", "--", python, str(APP)]
        print(
            f"\n$ mirrord exec --target pid/{pod.main_pid} -- python3 app.py   (in the pod's world)"
        )
        result = subprocess.run(cmd)
        if result.returncode != 0:
            print(f"mirrord exec failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        code = _steal_demo(pod, inventory, python)
        if code != 0:
            return code
    print("\n(HOME and PATH stay local: upstream mirrord's default env exclusions)")
    print("demo pod removed")
    return 0


def _steal_demo(pod: Pod, visitor: Pod, python: str) -> int:
    """Incoming traffic: the pod's port is stolen; a request from another pod to the pod's
    address is answered by the local program. The demo's exit code: 0 when it was."""
    import json
    import shutil
    import tempfile
    import time

    if not any(shutil.which(f"iptables-{b}-save") for b in ("legacy", "nft")):
        print(
            "\nthe steal step needs iptables, which this machine lacks: apt-get install "
            "iptables (make demo does)",
            file=sys.stderr,
        )
        return 1

    print(f"\n$ mirrord exec --target pid/{pod.main_pid} -f steal.json -- python3 app.py --serve")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as cfg:
        json.dump({"feature": {"network": {"incoming": {"mode": "steal"}}}}, cfg)
        cfg.flush()
        argv = [_mirrord(), "exec", "--target", f"pid/{pod.main_pid}", "-f", cfg.name, "--"]
        proc = subprocess.Popen([*argv, python, str(APP), "--serve", str(pod.port)])
        try:
            deadline = time.monotonic() + 30
            while b"mirrord:steal" not in pod.run(["iptables-save"]).stdout:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("the steal did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            get = (
                f"import urllib.request; print(urllib.request.urlopen('{pod.url}').read().decode())"
            )
            answer = visitor.run([python, "-c", get], timeout=30).stdout.decode().strip()
            print(f"  another pod: GET {pod.url} -> {answer}")
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                print("the stolen request never reached the local program", file=sys.stderr)
                return 1
            if code != 0:
                print(f"mirrord exec failed with exit code {code}", file=sys.stderr)
                return code
            if not answer.startswith("answered by the local program"):
                print("the request was not answered by the local program", file=sys.stderr)
                return 1
            return 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
