"""feature.network.dns.filter: queries for the names it matches are answered by this
machine's resolver (local) or by the pod's nameserver (remote), per query name.

mirrord runs in a private mount namespace whose /etc/hosts knows `local-only.internal`
and whose resolv.conf names only 127.0.0.1, so "this machine's resolver" asks nothing
beyond loopback. The program still reads the pod's resolv.conf and hosts (files feature),
so its queries go to the pod's dnsmasq, through the proxy, which answers filtered names.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.features.outgoing.net_world import MIRRORD, SVC_NAME, World

PY = "/usr/bin/python3"
LOCAL_NAME = "local-only.internal"
LOCAL_ADDR = "10.99.0.7"  # only ever resolved, never contacted
CLIENT = f"""
import socket
for name in ({LOCAL_NAME!r}, {SVC_NAME!r}):
    try:
        print(name, socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except socket.gaierror as e:
        print(name, 'unresolved')
"""


def _run(world: World, tmp_path: Path, dns_filter: dict[str, list[str]]) -> list[str]:
    (tmp_path / "hosts").write_text(f"127.0.0.1 localhost\n{LOCAL_ADDR} {LOCAL_NAME}\n")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"feature": {"network": {"dns": {"filter": dns_filter}}}}))
    script = (
        'mount --bind "$0/hosts" /etc/hosts && '
        'mount --bind "$0/resolv.conf" /etc/resolv.conf && exec "$@"'
    )
    argv = [MIRRORD, "exec", "--target", f"pid/{world.target.main_pid}", "-f", str(cfg)]
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(tmp_path), *argv, "--", PY, "-c",
         textwrap.dedent(CLIENT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize(
    "dns_filter", [{"local": [LOCAL_NAME]}, {"remote": [SVC_NAME]}], ids=["local", "remote"]
)
def test_filtered_names_resolve_locally(
    world: World, tmp_path: Path, dns_filter: dict[str, list[str]]
) -> None:
    lines = _run(world, tmp_path, dns_filter)
    assert f"{LOCAL_NAME} {LOCAL_ADDR}" in lines  # this machine's answer
    assert f"{SVC_NAME} {world.service.address}" in lines  # the pod's answer


def test_without_the_filter_names_are_the_pods(world: World, tmp_path: Path) -> None:
    lines = _run(world, tmp_path, {"local": ["other.internal"]})
    assert f"{LOCAL_NAME} unresolved" in lines  # the pod's dnsmasq does not know it
    assert f"{SVC_NAME} {world.service.address}" in lines
