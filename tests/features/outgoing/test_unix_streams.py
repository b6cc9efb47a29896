"""feature.network.outgoing.unix_streams: a unix stream socket connect to a matching path
reaches the target's socket (a file system path in the pod's mount namespace, and an
abstract name, which is per network namespace)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.features.outgoing.net_world import World

PY = "/usr/bin/python3"
DIR = "/mnt/mirrord-unix-test"  # on a tmpfs mounted only in the target pod
PATH = f"{DIR}/app.sock"
ABSTRACT = "mirrord-unix-test-abstract"
SERVER = f"""
import os, socket, threading
os.makedirs({DIR!r}, exist_ok=True)
def serve(s, tag):
    s.listen(16)
    while True:
        c, _ = s.accept()
        with c:
            c.sendall(tag + c.recv(100))
a = socket.socket(socket.AF_UNIX); a.bind({PATH!r})
b = socket.socket(socket.AF_UNIX); b.bind('\\0' + {ABSTRACT!r})
threading.Thread(target=serve, args=(b, b'abstract:'), daemon=True).start()
serve(a, b'pod:')
"""
CLIENT = f"""
import socket
for name in ({PATH!r}, '\\0' + {ABSTRACT!r}):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(name)
        s.sendall(b'hello'); s.shutdown(socket.SHUT_WR)
        print(name.strip('\\0'), 'got', s.recv(100).decode())
    except OSError as e:
        print(name.strip('\\0'), 'errno', e.errno)
"""


@pytest.fixture
def unix_server(world: World) -> Iterator[None]:
    world.target.run(["mount", "-t", "tmpfs", "mirrord-test", "/mnt"], check=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = world.target.spawn([PY, "-c", textwrap.dedent(SERVER)])
        for _ in range(100):
            if world.target.run(["test", "-S", PATH]).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the unix server in the target did not start")
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        world.target.run(["umount", "/mnt"])


def _config(regexes: list[str]) -> str:
    return json.dumps({"feature": {"network": {"outgoing": {"unix_streams": regexes}}}})


def test_matching_paths_reach_the_pods_sockets(
    world: World, unix_server: None, tmp_path: Path
) -> None:
    assert not Path(DIR).exists()  # the socket's directory exists only in the pod
    r = world.mirrord(
        [PY, "-c", textwrap.dedent(CLIENT)],
        config=_config([r"unix-test/app\.sock$", "^\0mirrord-unix-test-abs"]),
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    # mirrord's temporary files (the unix listeners' directory, the files cache) are gone.
    assert list(tmp_path.iterdir()) == []
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{PATH} got pod:hello" in lines
    assert f"{ABSTRACT} got abstract:hello" in lines


def test_other_paths_stay_local(world: World, unix_server: None) -> None:
    r = world.mirrord([PY, "-c", textwrap.dedent(CLIENT)], config=_config([r"some-other\.sock"]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{PATH} errno 2" in lines  # ENOENT: no such path on this machine
    assert f"{ABSTRACT} errno 111" in lines  # ECONNREFUSED: no such name in this netns
