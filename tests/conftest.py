"""Shared fixtures. Keep this generic: feature-specific fixtures live next to their tests."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod, sweep_stale

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "programs"
IS_ROOT = os.geteuid() == 0


def _load_build_module():  # type: ignore[no-untyped-def]
    # Loaded by path: tests/ is not a package, and "programs" is too generic a module name.
    spec = importlib.util.spec_from_file_location(
        "mirrord_test_programs_build", ROOT / "tests" / "programs" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_configure(config: pytest.Config) -> None:
    """Run as a background job of a non-interactive shell (`./.ci/run &`) or under nohup,
    the suite inherits SIGINT/SIGQUIT (or SIGHUP) ignored, and so would every program it
    starts: the Ctrl-C tests would then test that setting, not mirrord. The suite starts
    from the dispositions of a terminal's foreground job."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


@pytest.fixture(scope="session")
def programs() -> dict[str, Path]:
    """Test programs (tests/programs), built once per session into build/programs/."""
    return dict(_load_build_module().build_all(BUILD_DIR))


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_testpods() -> None:
    """Remove test pods left behind by an earlier run that was killed."""
    if IS_ROOT:
        sweep_stale()


@pytest.fixture
def network() -> Iterator[Network]:
    """A fresh bridge network for pods (mirrord.testpod.Network); needs root."""
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    with Network() as net:
        yield net


@pytest.fixture
def pod(network: Network) -> Pod:
    """One pod on `network` running the default HTTP service (answers "pod")."""
    return network.add_pod(
        "checkout-7f9c",
        env={"APP_MODE": "pod", "DB_URL": "postgres://db:5432/shop"},
        files={"/srv/app/config.yaml": b"greeting: from-the-pod\n"},
    )
