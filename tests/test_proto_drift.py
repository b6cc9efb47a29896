"""The committed generated code must be what `make proto` produces from proto/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ.get('PATH', '')}")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        check=True,
        env=env,
        cwd=ROOT / "proto",
    )
    fresh_files = sorted(p.name for p in (tmp_path / "mirrord" / "v1").iterdir())
    committed_files = sorted(
        p.name for p in (ROOT / "mirrord" / "v1").iterdir() if p.name.endswith(SUFFIXES)
    )
    assert fresh_files == committed_files, "generated files differ: run `make proto`"
    for name in fresh_files:
        fresh = (tmp_path / "mirrord" / "v1" / name).read_text()
        committed = (ROOT / "mirrord" / "v1" / name).read_text()
        assert fresh == committed, f"mirrord/v1/{name} is stale: run `make proto` and commit"
    assert shutil.which("protoc-gen-mypy", path=env["PATH"])


def test_every_proto_has_generated_code() -> None:
    for proto in (ROOT / "proto").rglob("*.proto"):
        for suffix in SUFFIXES:
            assert (ROOT / "mirrord" / "v1" / f"{proto.stem}{suffix}").exists(), (proto, suffix)
