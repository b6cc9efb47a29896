#!/usr/bin/env python3
"""Run CPython regression-test modules natively and under `mirrord exec`; report differences.

Each module runs twice, back to back: `python3 -m test -v --junit-xml X MODULE` natively,
then the same command under `mirrord exec --target pid/N` (default config). Per-test
outcomes come from the JUnit XML, completed by the verbose log (regrtest's XML has no
entry for setUpClass/setUpModule errors and no name for a test that failed only in
subtests; when a run is killed there is no XML at all). Prints per module the counts of
tests run / failed / errored / skipped in both modes, then every test whose outcome
differs, with the first line of its failure message.

    scripts/cpython_compare.py --target pid/4242 test_os test_socket
    scripts/cpython_compare.py --pod-file /tmp/proto/net2 --out /tmp/cmp test_os
    scripts/cpython_compare.py --out /tmp/cmp --report-only test_os   # re-read results
    scripts/cpython_compare.py --pod-file F --ignore '*VSOCK*' test_socket  # a VM without vsock

Needs root (mirrord starts a local agent) and libpython3.11-testsuite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODULES = [
    "test_os",
    "test_posix",
    "test_subprocess",
    "test_signal",
    "test_socket",
    "test_selectors",
    "test_asyncio",
    "test_pty",
    "test_select",
    "test_fcntl",
    "test_socketserver",
    "test_threading",
    "test_time",
    "test_shutil",
    "test_tempfile",
]
MODES = ("native", "mirrord")
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
XFAIL, XPASS, MISSING = "expected-failure", "unexpected-success", "not-run"

# "FAIL: test_x (test.test_os.C.test_x) (i=1)" / "ERROR: setUpClass (test.test_os.C)"
_BLOCK_HEAD = re.compile(r"^(FAIL|ERROR): (\S+) \(([\w.]+)\)(.*)$", re.M)
_SEPARATOR = re.compile(r"^(?:={70}|-{70})$", re.M)
# verbose status lines, used only when the XML is missing: "test_x (mod.C.test_x) ... ok"
_STATUS = re.compile(
    r"^\S+ \(([\w.]+)\)[^\n]*?(?:\n[^\n]*?)? \.\.\. "
    r"(ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
    re.M,
)
_STATUS_MAP = {
    "ok": PASSED,
    "FAIL": FAILED,
    "ERROR": ERROR,
    "skipped": SKIPPED,
    "expected failure": XFAIL,
    "unexpected success": XPASS,
}


@dataclass
class Case:
    outcome: str
    message: str = ""


@dataclass
class Run:
    """One module run in one mode."""

    module: str
    mode: str
    seconds: float = 0.0
    returncode: int | None = None
    killed: bool = False
    verdict: str = ""
    has_xml: bool = False
    cases: dict[str, Case] = field(default_factory=dict)

    def count(self, *outcomes: str) -> int:
        return sum(c.outcome in outcomes for c in self.cases.values())


def first_exception_line(block: str) -> str:
    """The exception line of the last traceback in a failure block (else its first line)."""
    lines = block.splitlines()
    found = ""
    in_tb = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_tb = True
        elif in_tb and line and not line.startswith(" "):
            found, in_tb = line, False
    if found:
        return found
    return next((ln.strip() for ln in lines if ln.strip()), "")


def xml_cases(path: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    root = ET.parse(path).getroot()
    for e in root.iter("testcase"):
        name = e.get("name")
        if not name:  # failed in subtests only: named from the log
            continue
        outcome, msg = PASSED, ""
        for tag, kind in (("error", ERROR), ("failure", FAILED), ("output", XFAIL)):
            sub = e.find(tag)
            if sub is not None:
                outcome = kind
                text = sub.get("message") or sub.text or ""
                msg = first_exception_line(text) if kind != XFAIL else ""
                break
        else:
            skipped, xpass = e.find("skipped"), e.find("outcome")
            if skipped is not None:
                outcome, msg = SKIPPED, next(iter((skipped.text or "").splitlines()), "")
            elif xpass is not None:
                outcome = XPASS
        cases[name] = Case(outcome, msg)
    return cases


def log_failures(log: str) -> dict[str, Case]:
    """FAIL:/ERROR: blocks that unittest prints at the end of a verbose run."""
    out: dict[str, Case] = {}
    heads = list(_BLOCK_HEAD.finditer(log))
    for h in heads:
        kind, method, ident, extra = h.groups()
        start = h.end()
        # block body: after the dashed separator, up to the next ===== separator
        m = _SEPARATOR.search(log, start)
        body_start = m.end() if m else start
        nxt = re.search(r"^={70}$", log[body_start:], re.M)
        body = log[body_start : body_start + nxt.start()] if nxt else log[body_start:]
        if method in ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule"):
            name = f"{ident}.{method}"
        else:
            name = ident
        extra = extra.strip()
        if extra:
            name = f"{name} {extra}"
        out[name] = Case(FAILED if kind == "FAIL" else ERROR, first_exception_line(body))
    return out


def load_run(out: Path, module: str, mode: str) -> Run:
    meta_path = out / f"{module}.{mode}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    run = Run(module, mode, meta.get("seconds", 0.0), meta.get("returncode"))
    run.killed = meta.get("killed", False)
    log_path = out / f"{module}.{mode}.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    m = re.search(r"^== Tests result: (.*) ==$", log, re.M)
    run.verdict = m.group(1) if m else ("killed" if run.killed else "no result line")
    xml = out / f"{module}.{mode}.xml"
    if xml.exists():
        run.has_xml = True
        run.cases = xml_cases(xml)
    else:
        for m in _STATUS.finditer(log):
            run.cases[m.group(1)] = Case(_STATUS_MAP[m.group(2)])
    for name, case in log_failures(log).items():
        base = name.split(" ", 1)[0]
        if " " in name and run.cases.get(base, Case(PASSED)).outcome == PASSED:
            run.cases.pop(base, None)  # the parent test is reported by its subtests
        run.cases[name] = case
    return run


def run_module(
    module: str,
    mode: str,
    out: Path,
    python: str,
    mirrord: str,
    target: str,
    test_timeout: int,
    module_timeout: int,
    ignore: list[str] | None = None,
) -> None:
    cwd = out / "cwd" / f"{module}.{mode}"
    cwd.mkdir(parents=True, exist_ok=True)
    xml = out / f"{module}.{mode}.xml"
    xml.unlink(missing_ok=True)
    argv = [python, "-m", "test", "-v", "--timeout", str(test_timeout)]
    for pattern in ignore or ():
        argv += ["-i", pattern]
    argv += ["--junit-xml", str(xml), module]
    if mode == "mirrord":
        argv = [mirrord, "exec", "--target", target, "--", *argv]
    killed = False
    start = time.monotonic()
    with (out / f"{module}.{mode}.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=module_timeout)
        except subprocess.TimeoutExpired:
            killed = True
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
    meta = {
        "argv": argv,
        "seconds": round(time.monotonic() - start, 1),
        "returncode": proc.returncode,
        "killed": killed,
    }
    (out / f"{module}.{mode}.json").write_text(json.dumps(meta, indent=1))


def report(runs: dict[str, Run]) -> list[str]:
    native, mirr = runs["native"], runs["mirrord"]
    lines = [f"## {native.module}"]
    lines.append(f"{'':10} {'run':>5} {'failed':>6} {'errors':>6} {'skipped':>7}  secs  result")
    for r in (native, mirr):
        ran = len(r.cases) - r.count(SKIPPED, MISSING)
        note = "" if r.has_xml else " (no XML: from log)"
        lines.append(
            f"{r.mode:10} {ran:5} {r.count(FAILED):6} {r.count(ERROR):6} {r.count(SKIPPED):7}"
            f" {r.seconds:5.0f}  {r.verdict}{note}"
        )
    diffs = []
    for name in sorted(native.cases.keys() | mirr.cases.keys()):
        a = native.cases.get(name, Case(MISSING))
        b = mirr.cases.get(name, Case(MISSING))
        if a.outcome != b.outcome:
            diffs.append((name, a, b))
    if not diffs:
        lines.append("no differences")
    for name, a, b in diffs:
        lines.append(f"  {name}: native={a.outcome} mirrord={b.outcome}")
        for mode, c in (("native", a), ("mirrord", b)):
            if c.message and c.outcome not in (PASSED, MISSING):
                lines.append(f"      {mode}: {c.message[:200]}")
    return lines


def parse_target(args: argparse.Namespace) -> str:
    if args.target:
        return str(args.target)
    if args.pod_file:
        return "pid/" + Path(args.pod_file).read_text().split()[0]
    sys.exit("give --target pid/N or --pod-file FILE (first word: the pid)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    p.add_argument("--target", help="mirrord target, e.g. pid/4242")
    p.add_argument("--pod-file", help="file whose first word is the target pid")
    p.add_argument("--out", default="/tmp/cpython_compare", help="output directory")
    p.add_argument("--python", default="/usr/bin/python3")
    p.add_argument("--mirrord", default=str(Path(sys.executable).parent / "mirrord"))
    p.add_argument("--timeout", type=int, default=300, help="regrtest per-test timeout")
    p.add_argument("--module-timeout", type=int, default=1200, help="outer timeout per run")
    p.add_argument("--modes", default=",".join(MODES), help="native,mirrord (or one)")
    p.add_argument("--report-only", action="store_true", help="only parse earlier results")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        help="regrtest -i PATTERN: tests this machine cannot run at all (both modes)",
    )
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    modes = [m for m in args.modes.split(",") if m]
    if not args.report_only:
        target = parse_target(args)
        for module in args.modules:
            for mode in modes:
                print(f"running {module} {mode}", file=sys.stderr, flush=True)
                run_module(
                    module, mode, out, args.python, args.mirrord, target,
                    args.timeout, args.module_timeout, args.ignore,
                )  # fmt: skip
    totals = dict.fromkeys(MODES, 0.0)
    for module in args.modules:
        runs = {mode: load_run(out, module, mode) for mode in MODES}
        for mode, r in runs.items():
            totals[mode] += r.seconds
        print("\n".join(report(runs)) + "\n")
    print(f"total seconds: native {totals['native']:.0f}, mirrord {totals['mirrord']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
