"""Files from the target: native vs under `mirrord exec` (fs mode read), side by side.

- python3 start-up importing a few modules (everything local by the default rules: the
  cost is the trapped open/stat calls), also under `strace -f` for scale;
- `find` (busybox, static) over a 5 000-file tree: remote (in a pod) vs the same tree local;
- sha256 of a 50 MiB file: remote (materialised once on open) vs local.
Run as root: python bench/files.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrord.testpod import create_pod

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
IMPORTS = "import json, re, argparse, subprocess, pathlib, email.parser"
RUNS = 5


def timed(argv: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (pods are namespaces)", file=sys.stderr)
        return 1
    local = Path(tempfile.mkdtemp(prefix="mirrord-bench-"))
    try:
        tree = "mkdir -p {0} && cd {0} && for d in $(seq 50); do mkdir d$d; " \
               "for f in $(seq 100); do : > d$d/f$f; done; done"  # fmt: skip
        subprocess.run(["sh", "-c", tree.format(local / "tree")], check=True)
        with open(local / "big.bin", "wb") as big:
            subprocess.run(["head", "-c", str(50 << 20), "/dev/urandom"], check=True, stdout=big)
        # A pod file under /srv gives the pod its own /srv (an overlay on a tmpfs), so the
        # trees made in it below never touch the host's /srv.
        marker = {"/srv/bench/README": "bench tree\n"}
        with create_pod("bench-files", argv=["sleep", "600"], files=marker) as pod:
            pod.run(["sh", "-c", tree.format("/srv/bench/tree")], check=True, timeout=120)
            pod.run(["sh", "-c", f"head -c {50 << 20} /dev/urandom > /srv/bench/big.bin"],
                    check=True)  # fmt: skip
            mirrord = [MIRRORD, "exec", "-t", f"pid/{pod.main_pid}", "--"]
            # The mirrord CLI's own start-up (agent, session) is not the program's: measure
            # an empty program under mirrord and subtract it.
            # More runs for the small numbers: the start-up subtracted is ~400 ms and
            # varies by tens of ms, the python row is ~30-100 ms.
            base = timed([*mirrord, "/bin/true"], 3 * RUNS)
            rows = []
            py = [PY, "-c", IMPORTS]
            native = timed(py, 3 * RUNS)
            under = timed([*mirrord, *py], 3 * RUNS) - base + timed(["/bin/true"])
            strace = timed(["strace", "-f", "-qq", "-o", "/dev/null", *py])
            rows.append(("python3 start-up (imports)", native, under, f"strace -f: {strace:.1f}"))
            find_local = timed(["busybox", "find", str(local / "tree")], 3)
            find_remote = timed([*mirrord, "busybox", "find", "/srv/bench/tree"], 3) - base
            rows.append(("busybox find, 5 000 files", find_local, find_remote, ""))
            sha_local = timed(["sha256sum", str(local / "big.bin")], 3)
            sha_remote = timed([*mirrord, "sha256sum", "/srv/bench/big.bin"], 3) - base
            rows.append(("sha256sum, 50 MiB", sha_local, sha_remote, "incl. the download"))
            print(f"mirrord exec start-up itself (subtracted below): {base:.1f} ms\n")
            print(f"| {'':28} | {'local ms':>9} | {'mirrord ms':>10} | {'ratio':>6} | note")
            print(f"|{'-' * 30}|{'-' * 11}|{'-' * 12}|{'-' * 8}|------")
            for name, a, b, note in rows:
                print(f"| {name:28} | {a:9.1f} | {b:10.1f} | {b / a:5.2f}x | {note}")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
