"""DNS queries to the pod's nameserver (UDP, and TCP after a truncated answer) for each
resolver, UDP in every shape, and dns.enabled=false."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.features.outgoing.net_world import BIG_NAME, HOSTS_NAME, SVC_NAME, World

PY = "/usr/bin/python3"


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.mark.parametrize(
    "argv",
    [
        ["curl", "-sS", "-m", "10", f"http://{SVC_NAME}:8080/"],
        ["busybox", "wget", "-q", "-O", "-", f"http://{SVC_NAME}:8080/"],
        py(
            f"import urllib.request; print(urllib.request.urlopen('http://{SVC_NAME}:8080/').read())"
        ),
        [
            "node",
            "-e",
            f"require('http').get('http://{SVC_NAME}:8080/', r => r.pipe(process.stdout))",
        ],
        ["GO", f"http://{SVC_NAME}:8080/"],
    ],
    ids=["curl", "busybox-wget", "python", "node", "go-pure-resolver"],
)
def test_pod_only_name(world: World, programs: dict[str, Path], argv: list[str]) -> None:
    argv = [str(programs["httpget-go"]) if a == "GO" else a for a in argv]
    # The files feature gives the program the target's resolv.conf/hosts; the queries
    # leave from the pod.
    r = world.mirrord(argv)
    assert r.returncode == 0, r.stderr
    assert "service" in r.stdout
    # The same program with the pod's files, without mirrord: the name does not resolve.
    import subprocess

    plain = subprocess.run(world.podfiles(argv), capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0
    assert "service" not in plain.stdout


def test_node_c_ares_resolver(world: World) -> None:
    code = f"require('dns').resolve4('{SVC_NAME}', (e, a) => console.log(e ? e.code : a[0]))"
    r = world.mirrord(["node", "-e", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == world.service.address


def test_hosts_only_name_and_tcp_fallback(world: World) -> None:
    r = world.mirrord(["getent", "ahostsv4", BIG_NAME])
    assert r.returncode == 0, r.stderr
    assert len({line.split()[0] for line in r.stdout.splitlines()}) == 40  # needs DNS over TCP
    r = world.mirrord(["getent", "hosts", HOSTS_NAME])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == world.service.address


def test_dns_disabled_keeps_queries_local(world: World) -> None:
    # The pod's files are forced (podfiles), so the local query goes to the pod's
    # nameserver address from the host, which it drops: no external resolver is asked.
    r = world.mirrord(
        world.podfiles(["getent", "hosts", SVC_NAME]),
        config='{"feature": {"network": {"dns": false}}}',
    )
    assert r.returncode != 0


ENGINES = pytest.mark.parametrize("engine", ["notify", "ptrace"])


def engine_env(engine: str) -> dict[str, str]:
    return dict(os.environ, MIRRORD_ENGINE=engine)


@ENGINES
def test_udp_shapes(world: World, engine: str) -> None:
    svc = world.service.address
    r = world.mirrord(
        py(f"""
        import socket
        dest = ('{svc}', 9999)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)
        s.sendto(b'a', dest); print('recvfrom', s.recvfrom(100))
        s.sendmsg([b'b'], [], 0, dest)
        data, anc, flags, addr = s.recvmsg(100); print('recvmsg', data, addr)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(10)
        c.connect(dest); c.send(b'c'); print('connected', c.recv(100), c.getpeername())
        print('sockname', c.getsockname()[0])
    """),
        env=engine_env(engine),
    )
    assert r.returncode == 0, r.stderr
    assert f"recvfrom (b'echo:a', ('{svc}', 9999))" in r.stdout
    assert f"recvmsg b'echo:b' ('{svc}', 9999)" in r.stdout
    assert f"connected b'echo:c' ('{svc}', 9999)" in r.stdout
    assert f"sockname {world.target.address}" in r.stdout


@ENGINES
def test_busybox_nslookup(world: World, engine: str) -> None:
    # busybox's own DNS client (not libc's), asking the pod's nameserver by address.
    r = world.mirrord(
        ["busybox", "nslookup", SVC_NAME, world.target.address], env=engine_env(engine)
    )
    # (exit status 1: dnsmasq refuses the AAAA half, having no upstream)
    assert f"Address: {world.service.address}" in r.stdout, r.stderr


@ENGINES
def test_sendmmsg_recvmmsg(world: World, programs: dict[str, Path], engine: str) -> None:
    # A static C program: two datagrams in one sendmmsg, answers through recvmmsg, each
    # with the remote's address (not the local interceptor's).
    svc = world.service.address
    r = world.mirrord([str(programs["mmsg"]), svc, "9999"], env=engine_env(engine))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "sent 2"
    assert sorted(lines[1:]) == [f"recv echo:m1 from {svc}:9999", f"recv echo:m2 from {svc}:9999"]


def test_udp_lite_is_not_relayed_as_udp(world: World) -> None:
    """Only the protocols mirrord implements are relayed (TCP, UDP): a UDP-Lite datagram
    to the program's own socket on 127.0.0.1 stays local (it went to the pod's loopback
    and the program hung)."""
    r = world.mirrord(
        py("""
        import socket
        IPPROTO_UDPLITE = 136
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
        a.bind(('127.0.0.1', 0)); a.settimeout(10)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
        b.sendto(b'lite', a.getsockname())
        data, peer = a.recvfrom(100)
        print(data.decode(), peer[0])
    """),
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lite", "127.0.0.1"]
