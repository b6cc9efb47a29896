"""Fixtures for the Kubernetes tests: a FAKE API server, and a fake one-node cluster whose
pods are real test pods (see fake_apiserver.py and fake_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Network
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_cluster import FakeCluster


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def cluster(apiserver: FakeApiServer, network: Network) -> Iterator[FakeCluster]:
    fake = FakeCluster(apiserver, network)
    try:
        yield fake
    finally:
        fake.close()
