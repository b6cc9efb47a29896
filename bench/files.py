"""Files from the target: native vs under `mirrord exec` (fs mode read), per engine, side
by side in one run.

Rows:
- python3 start-up importing a few modules (everything local by the default rules: the
  cost is the trapped open/stat calls);
- `ls -lR` of a local tree (/usr/lib/python3: a stat and two xattr calls per file);
- `find` (busybox, static) over a 5 000-file tree: remote (in a pod) vs the same tree local;
- sha256 of a 50 MiB file: remote (materialised once on open) vs local.
Columns: native, mirrord with the notify engine (the default), the same with
`--explain=FILE` (every decision written to a JSON lines file), with MIRRORD_ENGINE=ptrace,
`strace -f` for scale, and with --baseline DIR an older checkout's mirrord (its package
first on PYTHONPATH) in the same rounds. Each cell is the median of ROUNDS rounds; the
variants run one after the other within a round, so a busy moment hits them alike.
Times are the program's own, measured inside by tests/programs/repeat.c (median wall time
of N sequential runs), so mirrord's start-up is not in them; it is printed apart.
Run as root: python bench/files.py [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mirrord.testpod import create_pod

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
IMPORTS = "import json, re, argparse, subprocess, pathlib, email.parser"
ROUNDS = 5
REPEAT_C = Path(__file__).resolve().parent.parent / "tests" / "programs" / "repeat.c"


def timed(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env)  # fmt: skip
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", help="an older checkout to compare (its mirrord package)")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args()
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
            explained = [*mirrord[:-1], f"--explain={local / 'trace.jsonl'}", "--"]
            repeat = str(local / "repeat")
            subprocess.run(["gcc", "-O2", "-static", "-o", repeat, str(REPEAT_C)], check=True)
            env = dict(os.environ)
            variants: dict[str, tuple[list[str], dict[str, str]]] = {
                "native": ([], env),
                "notify": (mirrord, {**env, "MIRRORD_ENGINE": "notify"}),
                "notify --explain": (explained, {**env, "MIRRORD_ENGINE": "notify"}),
                "ptrace": (mirrord, {**env, "MIRRORD_ENGINE": "ptrace"}),
                "strace -f": (["strace", "-f", "-qq", "-o", "/dev/null"], env),
            }
            if args.baseline:
                old_path = os.pathsep.join(filter(None, [args.baseline, env.get("PYTHONPATH")]))
                variants["baseline"] = (mirrord, {**env, "PYTHONPATH": old_path})

            def inner(prefix: list[str], env: dict[str, str], n: int, cmd: list[str]) -> float:
                """The program's own median time over n runs (repeat prints it)."""
                # A neutral cwd: `python -m mirrord.agent` puts it first on sys.path.
                out = subprocess.run([*prefix, repeat, str(n), *cmd], check=True, env=env,
                                     capture_output=True, text=True, cwd=local).stdout  # fmt: skip
                return float(out)

            py = [PY, "-c", IMPORTS]
            ls = ["sh", "-c", "ls -lR /usr/lib/python3 > /dev/null"]
            rows: list[tuple[str, dict[str, Callable[[], float]], str]] = []

            def cell(
                variant: str, n: int, local_cmd: list[str], remote_cmd: list[str]
            ) -> Callable[[], float]:
                prefix, venv = variants[variant]
                cmd = local_cmd if variant in ("native", "strace -f") else remote_cmd
                return lambda: inner(prefix, venv, n, cmd)

            rows.append(("python3 start-up (imports)",
                         {v: cell(v, 15, py, py) for v in variants}, "all local"))  # fmt: skip
            rows.append(("ls -lR /usr/lib/python3",
                         {v: cell(v, 3, ls, ls) for v in variants}, "all local"))  # fmt: skip
            find_l = ["busybox", "find", str(local / "tree")]
            find_r = ["busybox", "find", "/srv/bench/tree"]
            rows.append(("busybox find, 5 000 files",
                         {v: cell(v, 1, find_l, find_r) for v in variants if v != "strace -f"},
                         "remote: first listing"))  # fmt: skip
            sha_l = ["sha256sum", str(local / "big.bin")]
            sha_r = ["sha256sum", "/srv/bench/big.bin"]
            rows.append(("sha256sum, 50 MiB",
                         {v: cell(v, 1, sha_l, sha_r) for v in variants if v != "strace -f"},
                         "remote: incl. the download"))  # fmt: skip
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, cells, _note in rows:
                    for variant, run in cells.items():
                        samples.setdefault((name, variant), []).append(run())
            base = timed([*mirrord, "/bin/true"], 5)
            print(f"mirrord exec start-up itself (not in the rows below): {base:.1f} ms; "
                  f"medians of {args.rounds} rounds, ms (ratio to native)\n")  # fmt: skip
            names = list(variants)
            print("| | " + " | ".join(names) + " | note |")
            print("|---|" + "---|" * len(names) + "---|")
            for name, cells, note in rows:
                native = statistics.median(samples[(name, "native")])
                out = []
                for v in names:
                    if v not in cells:
                        out.append("-")
                        continue
                    med = statistics.median(samples[(name, v)])
                    out.append(
                        f"{med:.1f}" if v == "native" else f"{med:.1f} ({med / native:.2f}x)"
                    )
                print(f"| {name} | " + " | ".join(out) + f" | {note} |")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
