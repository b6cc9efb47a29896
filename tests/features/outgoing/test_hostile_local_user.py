"""A hostile local user (`nobody`) against every socket mirrord opens on this machine's
loopback for the program (#12): the UDP interceptor, a TCP interceptor (stream path) and
the agent's direct listener. None may carry that user's traffic into the pod."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time

from mirrord.features.outgoing.proxy import NetProxy
from mirrord.features.sockets.sockaddr import parse_sockaddr
from mirrord.v1 import net_pb2, net_pb2_grpc
from tests.features.outgoing.net_world import MIRRORD, World, inprocess_agent

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# As nobody: send `data` to 127.0.0.1:PORT over UDP or TCP, print what comes back.
POKE = """
import socket, sys
kind, port, data = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.settimeout(2)
try:
    if kind == "udp":
        s.sendto(data, ("127.0.0.1", port))
        print("GOT", s.recv(65536))
    else:
        s.connect(("127.0.0.1", port)); s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        print("GOT", got)
except OSError as e:
    print("NOTHING", type(e).__name__)
"""


def _poke(kind: str, port: int, data: bytes) -> str:
    r = subprocess.run(
        [*NOBODY, sys.executable, "-c", POKE, kind, str(port), data.hex()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# The program: one datagram to the pod's echo server (its interceptor then exists), the
# reply, then it waits while the test pokes, and sends a last one to show it still works.
UDP_PROGRAM = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"first", (sys.argv[1], 9999)); print("REPLY", s.recv(100), flush=True)
time.sleep(float(sys.argv[2]))
s.sendto(b"last", (sys.argv[1], 9999)); print("REPLY", s.recv(100), flush=True)
"""


def _udp_interceptors(pid: int) -> list[int]:
    out = subprocess.run(["ss", "-Hunap"], capture_output=True, text=True, check=True).stdout
    return [
        int(m.group(1))
        for line in out.splitlines()
        if f"pid={pid}," in line
        for m in [re.search(r"127\.0\.0\.1:(\d+)\s", line)]
        if m
    ]


def test_nobody_cannot_send_through_the_udp_interceptor(world: World) -> None:
    proc = subprocess.Popen(
        [MIRRORD, "exec", "--target", f"pid/{world.target.main_pid}", "--",
         "/usr/bin/python3", "-c", UDP_PROGRAM, world.service.address, "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "REPLY b'echo:first'"
        ports: list[int] = []
        deadline = time.monotonic() + 10
        while not ports and time.monotonic() < deadline:
            ports = _udp_interceptors(proc.pid)
            time.sleep(0.05)
        assert ports, "no UDP interceptor found"
        for port in ports:
            assert _poke("udp", port, b"from-nobody").startswith("NOTHING"), port
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "REPLY b'echo:last'"  # the program's own traffic still flows
    assert err.count("not the program's") == 1, err  # said once


async def test_nobody_cannot_use_a_tcp_interceptor(world: World) -> None:
    """Stream path: between its listen() and the program's connect, the interceptor port
    takes connections from anyone; one from nobody is reset, the program's relayed."""
    async with inprocess_agent(world) as (client, _method, svc):
        proxy = NetProxy(client.channel, client.metadata())
        raw = socket.AF_INET.to_bytes(2, "little") + (8080).to_bytes(2, "big") + svc + bytes(8)
        dest = parse_sockaddr(raw)
        assert dest is not None
        try:
            port = await proxy.open_tcp(dest)
            # nobody gets there first (the relay accepts one loop turn later)
            poke = asyncio.create_task(
                asyncio.to_thread(_poke, "tcp", port, b"GET / HTTP/1.0\r\n\r\n")
            )
            await asyncio.sleep(0.5)
            program = socket.socket()
            program.connect(("127.0.0.1", port))  # as the supervisor does, then notes it
            proxy.note_local("v4", program.getsockname()[1], port)
            assert (await poke).startswith(("NOTHING", "GOT b''")), "nobody got through"
            program.sendall(b"GET / HTTP/1.0\r\n\r\n")
            program.shutdown(socket.SHUT_WR)
            got = b""
            loop = asyncio.get_running_loop()
            program.setblocking(False)
            while chunk := await loop.sock_recv(program, 65536):
                got += chunk
            assert got.endswith(b"service")
            assert proxy.refused_peers == 1
            program.close()
        finally:
            await proxy.close()


async def test_nobody_cannot_use_the_direct_listener(world: World) -> None:
    """The agent's direct listener takes a request only with the session's secret."""
    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        reply = await stub.Direct(net_pb2.DirectRequest(), metadata=client.metadata())
        from mirrord.wire.direct import DirectRequest, encode_request

        guessed = encode_request(DirectRequest(os.urandom(len(reply.secret)), svc, 8080))
        got = await asyncio.to_thread(_poke, "tcp", reply.v4_port, guessed + b"GET /\r\n\r\n")
        assert got.startswith("NOTHING") or got == "GOT b''", got
