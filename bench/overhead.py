"""Overhead of running under mirrord, per engine: native vs `strace -f` vs the supervisor
alone vs `mirrord exec`, side by side in one run.

Prints a table of medians over N rounds (default 15) for three workloads; within a round
every variant runs once, one after the other, so a busy moment hits them alike. Columns:
- native: the command alone;
- strace -f: `strace -f -o /dev/null` (a ptrace tool that stops at every syscall);
- supervisor notify / ptrace: `python -m mirrord.supervisor --engine E` (no agent; the
  hostname feature only);
- exec notify / ptrace: the whole `mirrord exec --target pid/N` command with only the env
  feature (fs local, network off): CLI start, local agent, env from the pod, the program,
  cleanup; exec - fixed: exec notify minus the median of `mirrord exec -- /bin/true`;
- baseline (--baseline DIR): exec with an older checkout's mirrord package.
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


def once(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env=env, cwd=cwd)  # fmt: skip
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=15)
    ap.add_argument("--baseline", help="an older checkout to compare (its mirrord package)")
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
    cwd = tempfile.mkdtemp(prefix="mirrord-bench-")  # `python -m` puts the cwd on sys.path
    base_env = dict(os.environ)
    with create_pod(name="bench", hostname="bench-pod", env=env) as pod:
        exec_prefix = [mirrord, "exec", "-f", cfg.name, "--target", f"pid/{pod.main_pid}", "--"]
        sup = [sys.executable, "-m", "mirrord.supervisor", "--hostname", "bench-pod"]
        variants: dict[str, tuple[list[str], dict[str, str]]] = {
            "native": ([], base_env),
            "supervisor notify": ([*sup, "--engine", "notify", "--"], base_env),
            "supervisor ptrace": ([*sup, "--engine", "ptrace", "--"], base_env),
            "exec notify": (exec_prefix, {**base_env, "MIRRORD_ENGINE": "notify"}),
            "exec ptrace": (exec_prefix, {**base_env, "MIRRORD_ENGINE": "ptrace"}),
        }
        if strace:
            variants["strace -f"] = ([strace, "-f", "-o", "/dev/null"], base_env)
        if args.baseline:
            old = os.pathsep.join(filter(None, [args.baseline, base_env.get("PYTHONPATH")]))
            variants["baseline exec"] = (exec_prefix, {**base_env, "PYTHONPATH": old})
        fixed_samples = []
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            fixed_samples.append(once([*exec_prefix, "/bin/true"], base_env, cwd))
            for label, cmd in WORKLOADS.items():
                for variant, (prefix, venv) in variants.items():
                    samples.setdefault((label, variant), []).append(
                        once([*prefix, *cmd], venv, cwd)
                    )
    os.unlink(cfg.name)
    shutil.rmtree(cwd, ignore_errors=True)
    fixed = statistics.median(fixed_samples)
    print(
        f"medians of {args.runs} rounds, seconds (ratio to native); "
        f"fixed cost of `mirrord exec -- /bin/true`: {fixed:.3f}s\n"
    )
    names = list(variants)
    print("| workload | " + " | ".join(names) + " | exec - fixed |")
    print("|---|" + "---|" * (len(names) + 1))
    for label in WORKLOADS:
        native = statistics.median(samples[(label, "native")])
        cells = [f"{native:.4f}"]
        for v in names[1:]:
            med = statistics.median(samples[(label, v)])
            cells.append(f"{med:.4f} ({med / native:.2f}x)")
        inc = max(statistics.median(samples[(label, "exec notify")]) - fixed, 0.0)
        cells.append(f"{inc:.4f} ({inc / native:.2f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
