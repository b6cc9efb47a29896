"""Build the test programs into a directory (default build/programs/), only when needed.

A binary is rebuilt when it is missing or older than any of its sources. Go builds use
Debian's Go with no module downloads (a go.mod with no dependencies, GOPROXY=off) and keep
GOCACHE/GOPATH inside the build directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent

# name -> (sources, extra gcc flags); all linked statically so they run with no libc hooks.
C_PROGRAMS: dict[str, tuple[list[str], list[str]]] = {
    "envprint": (["envprint.c"], []),
    "forker": (["forker.c"], []),
    "threads": (["threads.c"], ["-pthread"]),
    "spawner": (["spawner.c"], []),
    "exitwith": (["exitwith.c"], []),
    "mmsg": (["mmsg.c"], []),
    "repeat": (["repeat.c"], []),
    "untraced": (["untraced.c"], []),
    "slowconnect": (["slowconnect.c"], []),
    "connects": (["connects.c"], []),
    "forkkill": (["forkkill.c"], []),
    "podview": (["podview.c"], ["-g", "-O0"]),  # debugged: source-level stepping
}
# name -> (package directory, extra `go build` flags)
GO_PROGRAMS: dict[str, tuple[str, list[str]]] = {
    "envprint-go": ("envprint-go", []),
    "httpget-go": ("httpget-go", []),
    "files-go": ("files-go", []),
    "httpserve-go": ("httpserve-go", []),
    "podview-go": ("podview-go", ["-gcflags=all=-N -l"]),  # debugged with dlv
}
SCRIPTS: dict[str, str] = {"interactive": "interactive.py"}


def _stale(out: Path, sources: list[Path]) -> bool:
    if not out.exists():
        return True
    built = out.stat().st_mtime
    return any(s.stat().st_mtime > built for s in sources)


def _build_c(name: str, sources: list[Path], flags: list[str], out: Path) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = ["gcc", "-O2", "-Wall", "-Werror", "-static", *flags, "-o", str(tmp)]
    subprocess.run([*cmd, *map(str, sources)], check=True, capture_output=True, text=True)
    tmp.replace(out)  # atomic: a concurrent session never runs half a binary


def _build_go(pkg_dir: Path, out: Path, dest: Path, flags: list[str]) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(dest / "go-home"),
        "CGO_ENABLED": "0",  # pure Go, statically linked
        "GOPATH": str(dest / "gopath"),
        "GOCACHE": str(dest / "gocache"),
        "GOPROXY": "off",  # never fetch modules: the program uses only the standard library
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
    }
    subprocess.run(
        ["go", "build", "-trimpath", *flags, "-o", str(tmp), "."],
        cwd=pkg_dir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    tmp.replace(out)


def build_all(dest: Path) -> dict[str, Path]:
    """Build every test program into `dest` (if stale) and return {name: path}."""
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    try:
        for name, (srcs, flags) in C_PROGRAMS.items():
            sources = [SRC / s for s in srcs]
            target = dest / name
            if _stale(target, sources):
                _build_c(name, sources, flags, target)
            out[name] = target
        for name, (sub, go_flags) in GO_PROGRAMS.items():
            pkg = SRC / sub
            sources = sorted(pkg.iterdir())
            target = dest / name
            if _stale(target, sources):
                _build_go(pkg, target, dest, go_flags)
            out[name] = target
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"building test program failed: {e.cmd}\n{e.stderr}") from e
    for name, script in SCRIPTS.items():
        # Scripts run from the source tree; a copy would only go stale.
        out[name] = SRC / script
    return out


if __name__ == "__main__":
    default = SRC.parent.parent / "build" / "programs"
    built = build_all(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    for n, p in sorted(built.items()):
        print(f"{n}\t{p}")
