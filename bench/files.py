"""Files from the target: native vs under `mirrord exec` (fs mode read), side by side.

- python3 start-up importing a few modules (everything local by the default rules: the
  cost is the trapped open/stat calls), also under `strace -f` for scale;
- `find` (busybox, static) over a 5 000-file tree: remote (in a pod) vs the same tree local;
- sha256 of a 50 MiB file: remote (materialised once on open) vs local.
Times are the program's own, measured inside by tests/programs/repeat.c (median wall time
of N sequential runs), so mirrord's start-up is not in them; it is printed apart.
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
REPEAT_C = Path(__file__).resolve().parent.parent / "tests" / "programs" / "repeat.c"


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
            # The program's own time, measured inside by `repeat` (a static C program):
            # mirrord's start-up (CLI, agent, session) is not part of it.
            repeat = str(local / "repeat")
            subprocess.run(["gcc", "-O2", "-static", "-o", repeat, str(REPEAT_C)], check=True)

            def inner(prefix: list[str], n: int, cmd: list[str], runs: int = 3) -> float:
                return statistics.median(
                    float(subprocess.run([*prefix, repeat, str(n), *cmd], check=True,
                                         capture_output=True, text=True).stdout)
                    for _ in range(runs)
                )  # fmt: skip

            rows = []
            py = [PY, "-c", IMPORTS]
            native = inner([], 15, py)
            under = inner(mirrord, 15, py)
            no_notify = inner(["env", "MIRRORD_NO_NOTIFY=1", *mirrord], 15, py)
            strace = inner(["strace", "-f", "-qq", "-o", "/dev/null"], 15, py)
            note = f"strace -f: {strace:.1f}; ptrace stops only: {no_notify:.1f}"
            rows.append(("python3 start-up (imports)", native, under, note))
            find_local = inner([], 3, ["busybox", "find", str(local / "tree")])
            find_remote = inner(mirrord, 1, ["busybox", "find", "/srv/bench/tree"])
            rows.append(("busybox find, 5 000 files", find_local, find_remote, "first listing"))
            sha_local = inner([], 3, ["sha256sum", str(local / "big.bin")])
            sha_remote = inner(mirrord, 1, ["sha256sum", "/srv/bench/big.bin"])
            rows.append(("sha256sum, 50 MiB", sha_local, sha_remote, "incl. the download"))
            base = timed([*mirrord, "/bin/true"], RUNS)
            print(f"mirrord exec start-up itself (not in the rows below): {base:.1f} ms\n")
            print(f"| {'':28} | {'local ms':>9} | {'mirrord ms':>10} | {'ratio':>6} | note")
            print(f"|{'-' * 30}|{'-' * 11}|{'-' * 12}|{'-' * 8}|------")
            for name, a, b, note in rows:
                print(f"| {name:28} | {a:9.1f} | {b:10.1f} | {b / a:5.2f}x | {note}")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
