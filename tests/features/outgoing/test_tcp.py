"""Outgoing TCP through the target: many kinds of clients, errno fidelity, non-blocking
connect, concurrency, forked children, getpeername/getsockname."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.features.outgoing.net_world import MIRRORD, World, agent_of, other_end_owners, relay_env

PY = "/usr/bin/python3"


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def test_host_cannot_reach_the_service(world: World) -> None:
    r = subprocess.run(
        ["curl", "-sS", "-m", "1", f"http://{world.service.address}:8080/"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode != 0


@pytest.mark.parametrize(
    "argv",
    [
        ["curl", "-sS", "-m", "10", "http://ADDR:8080/"],
        ["busybox", "wget", "-q", "-O", "-", "http://ADDR:8080/"],
        py(
            "import urllib.request; print(urllib.request.urlopen('http://ADDR:8080/').read().decode())"
        ),
        ["node", "-e", "require('http').get('http://ADDR:8080/', r => r.pipe(process.stdout))"],
        ["GO", "http://ADDR:8080/"],
    ],
    ids=["curl", "busybox-wget", "python-urllib", "node", "go-static"],
)
def test_clients_fetch_from_the_service(
    world: World, programs: dict[str, Path], argv: list[str]
) -> None:
    argv = [a.replace("ADDR", world.service.address) for a in argv]
    if argv[0] == "GO":
        argv[0] = str(programs["httpget-go"])
    r = world.mirrord(argv)
    assert r.returncode == 0, r.stderr
    assert "service" in r.stdout
    if "go" in argv[0]:
        assert f"peer={world.service.address}:8080" in r.stdout


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_python_asyncio_and_addresses(world: World, stream: bool) -> None:
    svc = world.service.address
    r = world.mirrord(
        py(f"""
        import asyncio, os, socket
        async def main():
            r, w = await asyncio.open_connection('{svc}', 8080)
            w.write(b'GET / HTTP/1.0\\r\\n\\r\\n'); await w.drain()
            print('asyncio', (await r.read()).split(b'\\r\\n\\r\\n', 1)[1].decode())
            w.close()
        asyncio.run(main())
        s = socket.create_connection(('{svc}', 8080))
        print('peer', s.getpeername())
        print('sock', s.getsockname()[0])
        d = os.dup(s.fileno())
        print('dup', socket.socket(fileno=d).getpeername())
    """),
        env=relay_env(stream),
    )
    assert r.returncode == 0, r.stderr
    assert "asyncio service" in r.stdout
    assert f"peer ('{svc}', 8080)" in r.stdout
    assert f"sock {world.target.address}" in r.stdout  # the pod's side, not 127.0.0.1
    assert f"dup ('{svc}', 8080)" in r.stdout


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_ipv6_socket_with_v4_mapped_address(world: World, stream: bool) -> None:
    svc = world.service.address
    r = world.mirrord(
        py(f"""
        import socket
        s = socket.socket(socket.AF_INET6)
        s.connect(('::ffff:{svc}', 8080))
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        print(s.getpeername()[:2]); print(s.makefile('rb').read().split(b'\\r\\n\\r\\n')[1])
    """),
        env=relay_env(stream),
    )
    assert r.returncode == 0, r.stderr
    assert f"('::ffff:{svc}', 8080)" in r.stdout
    assert "b'service'" in r.stdout


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_errors_are_the_pods(world: World, stream: bool) -> None:
    svc = world.service.address
    prefix = svc.rsplit(".", 1)[0]
    # Refused: nothing on port 9 in the service pod. Network unreachable: pods have no
    # default route. Host unreachable: an address of the pods' /24 nobody has (ARP fails).
    r = world.mirrord(
        py(f"""
        import socket
        for addr in [('{svc}', 9), ('10.254.0.1', 80), ('{prefix}.250', 80)]:
            try:
                socket.create_connection(addr, timeout=30)
            except OSError as e:
                print(addr[0], e.errno)
    """),
        timeout=90,
        env=relay_env(stream),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{svc} 111" in lines  # ECONNREFUSED
    assert "10.254.0.1 101" in lines  # ENETUNREACH
    assert f"{prefix}.250 113" in lines  # EHOSTUNREACH


def test_timeout_is_the_pods(world: World) -> None:
    # A DROP for port 81 in the service pod, and SYN retries cut to 1 in the target's netns
    # (a per-netns sysctl): the pod's kernel gives up with ETIMEDOUT after ~3 s.
    world.service.run(["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "81", "-j", "DROP"])
    world.target.run(["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"], check=True)
    try:
        r = world.mirrord(
            py(f"""
            import socket
            try: socket.create_connection(('{world.service.address}', 81))
            except OSError as e: print('errno', e.errno)
        """),
            timeout=60,
        )
    finally:
        world.target.run(["sysctl", "-qw", "net.ipv4.tcp_syn_retries=6"])
        world.service.run(["iptables", "-D", "INPUT", "-p", "tcp", "--dport", "81", "-j", "DROP"])
    assert r.returncode == 0, r.stderr
    assert "errno 110" in r.stdout  # ETIMEDOUT


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_connecting_a_connected_socket_again_is_eisconn(world: World, stream: bool) -> None:
    r = world.mirrord(
        py(f"""
        import socket
        s = socket.create_connection(('{world.service.address}', 8080))
        print('again', s.connect_ex(('{world.service.address}', 8080)))
    """),
        env=relay_env(stream),
    )
    assert r.returncode == 0, r.stderr
    assert "again 106" in r.stdout  # EISCONN, as without mirrord


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_non_blocking_connect(world: World, stream: bool) -> None:
    # A pod-side refusal reaches a non-blocking socket as the kernel reports it: connect()
    # says EINPROGRESS, the socket becomes writable, SO_ERROR says ECONNREFUSED.
    svc = world.service.address
    r = world.mirrord(
        py(f"""
        import errno, select, socket
        for port in (8080, 9):
            s = socket.socket(); s.setblocking(False)
            rc = s.connect_ex(('{svc}', port))
            print(port, 'connect', rc)
            if rc == errno.EINPROGRESS:
                _, w, _ = select.select([], [s], [], 10)
                print(port, 'writable', w == [s])
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            print(port, 'result', rc)
            if rc == 0:
                s.setblocking(True); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                print(port, s.makefile('rb').read().split(b'\\r\\n\\r\\n')[1])
            else:
                try: s.getpeername()
                except OSError as e: print(port, 'getpeername', e.errno)
    """),
        env=relay_env(stream),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "8080 result 0" in lines
    assert "8080 b'service'" in lines
    assert "9 connect 115" in lines  # EINPROGRESS
    assert "9 writable True" in lines
    assert "9 result 111" in lines  # ECONNREFUSED
    assert "9 getpeername 107" in lines  # ENOTCONN: the failed socket has no peer


def test_many_threads_many_connections(world: World) -> None:
    r = world.mirrord(
        py(f"""
        import socket, threading
        ok = []
        def worker():
            n = 0
            for _ in range(20):
                with socket.create_connection(('{world.service.address}', 6379), timeout=20) as s:
                    s.sendall(b'PING\\r\\n')
                    if s.recv(100) == b'+PONG\\r\\n': n += 1
            ok.append(n)
        ts = [threading.Thread(target=worker) for _ in range(50)]
        for t in ts: t.start()
        for t in ts: t.join()
        print('ok', sum(ok))
    """),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "ok 1000" in r.stdout


def test_forked_child_uses_the_parents_socket(world: World) -> None:
    r = world.mirrord(
        py(f"""
        import os, socket
        s = socket.create_connection(('{world.service.address}', 6379))
        if os.fork() == 0:
            print('child peer', s.getpeername()); s.sendall(b'PING\\r\\n')
            print('child got', s.recv(100)); os._exit(0)
        os.wait()
    """)
    )
    assert r.returncode == 0, r.stderr
    assert f"child peer ('{world.service.address}', 6379)" in r.stdout
    assert "child got b'+PONG\\r\\n'" in r.stdout


def test_redis_cli(world: World) -> None:
    r = world.mirrord(
        ["sh", "-c", f"redis-cli -h {world.service.address} set k v && "
         f"redis-cli -h {world.service.address} get k"]
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["OK", "v"]


def test_sequential_connections_with_mixed_endings(world: World) -> None:
    # The proxy reuses a stream after a clean connection (TcpConnect.reuse): whatever the
    # previous connection on it was (server closed first, program half-closed first,
    # refused), the next one gets exactly its own bytes.
    svc = world.service.address
    r = world.mirrord(
        py(f"""
        import socket
        req = b'GET / HTTP/1.0\\r\\n\\r\\n'
        def get(half_close):
            with socket.create_connection(('{svc}', 8080)) as s:
                s.sendall(req)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
                data = b''
                while chunk := s.recv(65536):
                    data += chunk
                return data.split(b'\\r\\n\\r\\n', 1)[1].decode()
        out = []
        for i in range(12):
            if i % 4 == 3:
                try:
                    socket.create_connection(('{svc}', 9))
                    out.append('connected?')
                except OSError as e:
                    out.append(str(e.errno))
            else:
                out.append(get(half_close=i % 2 == 1))
        print(' '.join(out))
    """)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["service", "service", "service", "111"] * 3


@pytest.mark.parametrize("stream", [False, True], ids=["direct", "stream"])
def test_who_relays_the_programs_connection(world: World, stream: bool) -> None:
    """With the agent on this machine, the program's socket is connected to the agent
    itself (no relay in mirrord); with MIRRORD_NO_DIRECT=1, to mirrord's interceptor."""
    code = f"""
        import os, socket, sys
        s = socket.create_connection(('{world.service.address}', 8080))
        print('ready', os.getpid(), flush=True)
        sys.stdin.readline()
    """
    args = [MIRRORD, "exec", "--target", f"pid/{world.target.main_pid}", "--", *py(code)]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=relay_env(stream)
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready, pid = proc.stdout.readline().split()
        assert ready == "ready"
        program = int(pid)
        relays = other_end_owners(program)  # the other end of the program's socket
        assert relays == {proc.pid if stream else agent_of(proc.pid)}
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("client", ["curl", "go-static", "python-errors"])
def test_the_ptrace_engine_connects_the_same(
    world: World, programs: dict[str, Path], client: str
) -> None:
    """The ptrace engine (MIRRORD_ENGINE=ptrace) runs the same handlers: connects from the
    pod, its addresses and its errors."""
    svc = world.service.address
    argv = {
        "curl": ["curl", "-sS", "-m", "10", f"http://{svc}:8080/"],
        "go-static": [str(programs["httpget-go"]), f"http://{svc}:8080/"],
        "python-errors": py(f"""
            import errno, socket
            for port in (8080, 8081):
                s = socket.socket()
                print(port, errno.errorcode.get(s.connect_ex(('{svc}', port)), 'ok'))
        """),
    }[client]
    r = world.mirrord(argv, env=dict(os.environ, MIRRORD_ENGINE="ptrace"))
    assert r.returncode == 0, r.stderr
    if client == "python-errors":
        assert r.stdout.split() == ["8080", "ok", "8081", "ECONNREFUSED"], r.stderr
    else:
        assert "service" in r.stdout
    if client == "go-static":
        assert f"peer={svc}:8080" in r.stdout
