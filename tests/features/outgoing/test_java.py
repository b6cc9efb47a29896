"""A Java `HttpClient` under mirrord fetches the service by its pod-only name.

The class is compiled here (javac from Debian's default-jdk-headless, in the Makefile's
APT_TEST), into build/programs/java/ and only when the source is newer, like
tests/programs/build.py does for the C and Go programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.features.outgoing.net_world import SVC_NAME, World

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "tests" / "programs" / "HttpGet.java"
OUT = ROOT / "build" / "programs" / "java"


@pytest.fixture(scope="module")
def java_classes() -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.fail("javac/java missing: install default-jdk-headless (make apt-test)")
    built = OUT / "HttpGet.class"
    if not built.exists() or built.stat().st_mtime < SOURCE.stat().st_mtime:
        # Compiled into a private directory, then renamed: a concurrent run never loads a
        # half-written class.
        tmp = OUT.with_name(f"java.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run(
            ["javac", "-d", str(tmp), str(SOURCE)], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        shutil.rmtree(OUT, ignore_errors=True)
        tmp.replace(OUT)
    return OUT


def test_java_httpclient_fetches_the_pod_only_name(world: World, java_classes: Path) -> None:
    r = world.mirrord(
        ["java", "-cp", str(java_classes), "HttpGet", f"http://{SVC_NAME}:8080/"], timeout=180
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "200 service"
