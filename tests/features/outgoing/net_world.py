"""The network world of the outgoing-traffic tests (the `world` fixture, module scope).

- `service` pod: HTTP on 8080 ("service"), Redis on 6379, a UDP echo on 9999. It drops
  every packet from the host, so only the target's namespace reaches it.
- `target` pod: the program's context. dnsmasq runs in it on its own address, answering
  `svc.pod.internal` (→ service) and `big.pod.internal` (40 A records in the pods' /24:
  the UDP answer is truncated, resolvers retry over TCP); its /etc/hosts has
  `hosts-only.internal`. It drops DNS from the host, so those names resolve only inside.
- `podfiles`: under mirrord the files feature gives the program the target's
  /etc/resolv.conf and /etc/hosts. The negative checks (no mirrord, or DNS kept local)
  run the program in a private mount namespace with copies of those two files bound on
  /etc (plus `timeout:1 attempts:1` to fail fast), so they never ask a real resolver.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient
from mirrord.features.outgoing.relay import tcp_method
from mirrord.testpod import Network, Pod
from mirrord.testpod.pod import http_server_argv

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
SVC_NAME = "svc.pod.internal"
BIG_NAME = "big.pod.internal"
HOSTS_NAME = "hosts-only.internal"
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
    "while True:\n"
    "    d, a = s.recvfrom(65536); s.sendto(b'echo:' + d, a)\n"
)


@dataclass
class World:
    net: Network
    target: Pod
    service: Pod
    files_dir: Path

    def podfiles(self, argv: list[str]) -> list[str]:
        """argv run with the target's /etc/resolv.conf and /etc/hosts (see module doc)."""
        script = (
            'mount --bind "$0/resolv.conf" /etc/resolv.conf && '
            'mount --bind "$0/hosts" /etc/hosts && exec "$@"'
        )
        return ["unshare", "-m", "sh", "-c", script, str(self.files_dir), *argv]

    def mirrord(
        self, argv: list[str], *, config: str | None = None, timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        args = [MIRRORD, "exec", "--target", f"pid/{self.target.main_pid}"]
        if config is not None:
            path = self.files_dir / f"cfg-{time.monotonic_ns()}.json"
            path.write_text(config)
            args += ["-f", str(path)]
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [*args, "--", *argv], capture_output=True, text=True, timeout=timeout, **kw
        )


def _wait_udp(pod: Pod, port: int) -> None:
    want = f":{port:04X} "
    for _ in range(100):
        if want in Path(f"/proc/{pod.main_pid}/net/udp").read_text():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing on udp/{port} in {pod.name}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    files_dir = tmp_path_factory.mktemp("podfiles")
    with Network() as net:
        service = net.add_pod("svc", argv=http_server_argv(8080, body="service"), wait_port=8080)
        target = net.add_pod("target", hosts_entries={HOSTS_NAME: service.address})
        for pod in (service, target):
            pod.run(["iptables", "-A", "INPUT", "-s", net.host_address, "-j", "DROP"], check=True)
        service.spawn(
            ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        service.spawn(["/usr/bin/python3", "-c", UDP_ECHO])
        # Answers only (never contacted): addresses in the pods' own /24.
        prefix = service.address.rsplit(".", 1)[0]
        big = [f"--host-record={BIG_NAME},{prefix}.{100 + i}" for i in range(40)]
        target.spawn(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
             f"--listen-address={target.address}", "--user=root", "--pid-file=",
             f"--host-record={SVC_NAME},{service.address}", *big],
        )  # fmt: skip
        service.wait_listening(6379)
        target.wait_listening(53)
        _wait_udp(service, 9999)
        root = Path(f"/proc/{target.main_pid}/root/etc")
        (files_dir / "resolv.conf").write_text(
            (root / "resolv.conf").read_text() + "options timeout:1 attempts:1\n"
        )
        shutil.copy(root / "hosts", files_dir / "hosts")
        yield World(net, target, service, files_dir)


@contextlib.asynccontextmanager
async def inprocess_agent(world: World) -> AsyncIterator[tuple[AgentClient, Any, bytes]]:
    """A real agent in this process, a client session on the target, the Tcp method and
    the service pod's address."""
    token = "test-token-inprocess"
    server = AgentServer(token, listen="127.0.0.1:0")
    await server.start()
    try:
        client = await AgentClient.connect(server.address, token, world.target.main_pid, timeout=10)
        try:
            yield client, tcp_method(client.channel), socket.inet_aton(world.service.address)
        finally:
            await client.close()
    finally:
        await server.stop(grace=1.0)


def relay_env(stream: bool) -> dict[str, str] | None:
    """The environment of a `mirrord exec` whose TCP connections go over the agent's Tcp
    streams (stream=True) instead of straight to the local agent (the default here)."""
    return {**os.environ, "MIRRORD_NO_DIRECT": "1"} if stream else None


def agent_of(mirrord_pid: int) -> int:
    for _ in range(100):
        for task in os.listdir(f"/proc/{mirrord_pid}/task"):
            children = Path(f"/proc/{mirrord_pid}/task/{task}/children").read_text().split()
            for child in children:
                if b"mirrord.agent" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
        time.sleep(0.05)
    raise AssertionError("no agent process found")


def other_end_owners(pid: int) -> set[int]:
    """The processes holding the other end of `pid`'s one established TCP connection on
    this host (`ss -tnp`): who relays it."""
    table = subprocess.run(
        ["ss", "-Htnp", "state", "established"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    owners: dict[tuple[str, str], set[int]] = {}  # (local, peer) -> pids
    for line in table:
        fields = line.split()
        for found in re.findall(r"pid=(\d+)", line):
            owners.setdefault((fields[2], fields[3]), set()).add(int(found))
    ours = [ends for ends, pids in owners.items() if pid in pids]
    assert len(ours) == 1, table
    local, peer = ours[0]
    return owners.get((peer, local), set())
