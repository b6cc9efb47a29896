"""The world of the debugger tests: a `target` pod (env APP_MODE=pod, a pod-only file, a
pod-only name `svc.pod.internal` in its /etc/hosts, its own HTTP server on 8080 answering
"pod"), a `service` pod reachable only from the target's network (HTTP on 8080 answering
"service"), and a `client` pod that sends requests to the target (stolen to the program).
The program under a debugger is tests/programs/podview(.c|-go): it prints what it sees of
the pod (`view()`), then serves stolen requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv
from tests.features.incoming.exec_world import Running
from tests.features.incoming.incoming_helpers import LOGGING_SERVER, mirrord_rules

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PORT = 8080
CONFIG_FILE = b"greeting: from-the-pod\n"
STEAL = {"feature": {"network": {"incoming": "steal"}}}


@dataclass
class DebugWorld:
    net: Network
    target: Pod
    service: Pod
    client: Pod
    tmp: Path

    def expected_view(self) -> list[str]:
        """view()'s lines as the pod would print them."""
        return [
            "APP_MODE=pod",
            f"HOSTNAME={self.target.hostname}",
            f"FILE={CONFIG_FILE.decode().strip()}",
            f"RESOLVED={self.service.address}",
            "OUTGOING=service",
        ]

    def start(self, argv: list[str]) -> Running:
        cfg = self.tmp / f"cfg-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps(STEAL))
        out = self.tmp / f"out-{time.monotonic_ns()}.log"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [MIRRORD, "exec", "--target", f"pid/{self.target.main_pid}", "-f", str(cfg),
                 "--", *argv],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.tmp, start_new_session=True,
            )  # fmt: skip
        return Running(self, proc, out)

    def request(self, path: str = "/", timeout: float = 30) -> str:
        """GET target:8080 from the client pod; the body."""
        url = f"http://{self.target.address}:{PORT}{path}"
        r = self.client.run(
            ["curl", "-s", "--max-time", str(int(timeout)), url], timeout=timeout + 5
        )
        return r.stdout.decode()


@pytest.fixture(scope="module")
def dworld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebugWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    tmp = tmp_path_factory.mktemp("debug")
    with Network() as net:
        service = net.add_pod("svc", argv=http_server_argv(8080, body="service"), wait_port=8080)
        service.run(["iptables", "-A", "INPUT", "-s", net.host_address, "-j", "DROP"], check=True)
        target = net.add_pod(
            "target",
            env={"APP_MODE": "pod"},
            files={"/srv/app/config.yaml": CONFIG_FILE},
            hosts_entries={"svc.pod.internal": service.address},
            argv=["/usr/bin/python3", "-c", LOGGING_SERVER, str(PORT)],
            wait_port=PORT,
        )
        client = net.add_pod("client", argv=["/bin/sleep", "3600"])
        yield DebugWorld(net, target, service, client, tmp)
        assert mirrord_rules(target) == []
