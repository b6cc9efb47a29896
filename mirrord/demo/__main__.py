"""`make demo`: a local demo pod, a sample program run plain and under `mirrord exec`.

The pod is a set of namespaces on this machine (mirrord.testpod) running a small HTTP
service with its own environment and hostname. Everything is removed at the end, also on
Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mirrord.testpod import create_pod, sweep_stale

APP = Path(__file__).with_name("app.py")
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
    with create_pod(
        name="checkout-7f9c", hostname="checkout-7f9c", env=POD_ENV, files=files
    ) as pod:
        print(f"demo pod: {pod.name}  pid {pod.main_pid}  address {pod.address}")
        print("          a small HTTP service with its own env, hostname and files\n")
        print("$ python3 app.py                                   (plain, on this machine)")
        subprocess.run([python, str(APP)], check=True)
        cmd = [_mirrord(), "exec", "--target", f"pid/{pod.main_pid}", "--", python, str(APP)]
        print(
            f"\n$ mirrord exec --target pid/{pod.main_pid} -- python3 app.py   (in the pod's world)"
        )
        result = subprocess.run(cmd)
        if result.returncode != 0:
            print(f"mirrord exec failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
    print("\n(HOME and PATH stay local: upstream mirrord's default env exclusions)")
    print("demo pod removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
