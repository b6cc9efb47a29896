"""Overhead of tracing: native vs `strace -f` vs mirrord, side by side in one run.

Prints a table of medians over N runs (default 15) for three workloads. Columns:
- native: the command alone;
- strace -f: `strace -f -o /dev/null` (a ptrace tool that stops at every syscall);
- supervisor: `python -m mirrord.supervisor` (tracing only, no agent);
- mirrord exec: the whole `mirrord exec --target pid/N` command with only the env feature
  (fs local, network off): CLI start, local agent,
  env from the pod, the traced program, cleanup;
- exec - fixed: mirrord exec minus the median of `mirrord exec -- /bin/true`, i.e. what
  the program itself costs under mirrord once mirrord is up.
Needs root (a demo pod and a local agent). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrord.testpod import create_pod, sweep_stale

PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
WORKLOADS: dict[str, list[str]] = {
    "python3 -c 'import asyncio, json, ssl'": [PY, "-c", "import asyncio, json, ssl"],
    "ls -lR /usr/lib/python3": ["sh", "-c", "ls -lR /usr/lib/python3 > /dev/null"],
    "200x fork+exec": ["sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done"],
}


def timed(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--runs", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (it creates a pod and a local agent)", file=sys.stderr)
        return 1
    sweep_stale()
    mirrord = str(Path(sys.executable).with_name("mirrord"))
    strace = shutil.which("strace")
    env = {"PATH": "/usr/bin:/bin", "APP_MODE": "bench"}
    # Env (and hostname) only: the other features are measured by their own benches.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as cfg:
        json.dump(
            {
                "feature": {
                    "fs": "local",
                    "network": {"incoming": "off", "outgoing": False, "dns": False},
                }
            },
            cfg,
        )
    with create_pod(name="bench", hostname="bench-pod", env=env) as pod:
        exec_prefix = [mirrord, "exec", "-f", cfg.name, "--target", f"pid/{pod.main_pid}", "--"]
        sup_prefix = [sys.executable, "-m", "mirrord.supervisor", "--hostname", "bench-pod", "--"]
        fixed = timed([*exec_prefix, "/bin/true"], args.runs)
        rows = []
        for label, cmd in WORKLOADS.items():
            native = timed(cmd, args.runs)
            st = timed([strace, "-f", "-o", "/dev/null", *cmd], args.runs) if strace else None
            sup = timed([*sup_prefix, *cmd], args.runs)
            ex = timed([*exec_prefix, *cmd], args.runs)
            rows.append((label, native, st, sup, ex, max(ex - fixed, 0.0)))
    os.unlink(cfg.name)
    print(
        f"medians of {args.runs} runs, seconds (ratio to native); "
        f"fixed cost of `mirrord exec -- /bin/true`: {fixed:.3f}s\n"
    )
    head = ["workload", "native", "strace -f", "supervisor", "mirrord exec", "exec - fixed"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, native, st, sup, ex, inc in rows:
        cells = [label, f"{native:.4f}"]
        for v in (st, sup, ex, inc):
            cells.append("n/a" if v is None else f"{v:.4f} ({v / native:.2f}x)")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
