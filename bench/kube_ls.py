"""`mirrord ls` against the fake API server with 10 000 pods (median of 5 runs), over TLS
(as every cluster serves it) and over plain http side by side: the difference is TLS in
both the fake server and the client.

Run: .venv/bin/python bench/kube_ls.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.test_kube_exec import mirrord
from tests.kube.test_kube_ls import N, fill


def run(tls: bool) -> float:
    with FakeApiServer(tls=tls) as api, tempfile.TemporaryDirectory() as tmp:
        fill(api, "big", N)
        kc = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        times = []
        for _ in range(5):
            start = time.monotonic()
            r = mirrord(kc, "ls", "-n", "big", "-o", "json")
            times.append(time.monotonic() - start)
            assert r.returncode == 0, r.stderr
    return statistics.median(times)


def main() -> None:
    with_tls, plain = run(True), run(False)
    baseline = []
    for _ in range(3):
        start = time.monotonic()
        mirrord(Path("/nonexistent"), "--version")
        baseline.append(time.monotonic() - start)
    print(f"mirrord ls, {N} pods, pages of 500, median of 5:")
    print("| over TLS | over plain http | CLI start-up alone |")
    print("|---|---|---|")
    print(f"| {with_tls:.2f} s | {plain:.2f} s | {statistics.median(baseline):.2f} s |")


if __name__ == "__main__":
    main()
