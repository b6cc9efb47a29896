"""`mirrord exec --explain`: a program that opens a local file, a remote one, a not_found
one and a missing one, connects to a filtered-local and to remote addresses, resolves a
pod-only name and listens on a mirrored port. The trace has each decision with the rule
that made it, the summary's counts match it, an unused rule is named, and every line
validates against the documented schema."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import threading
from collections import Counter
from pathlib import Path

import jsonschema

from mirrord.explain.schema import RECORD_SCHEMA
from tests.features.outgoing.net_world import MIRRORD, SVC_NAME, World

PY = "/usr/bin/python3"

PROGRAM = """
import os, socket, sys
svc, local_port = sys.argv[1], int(sys.argv[2])
open(sys.argv[0]).read()                      # local: under /tmp (built-in list)
print("hosts", "hosts-only.internal" in open("/etc/hosts").read())  # remote: DNS file
for path in ("/nope/secret", "/srv/missing.txt"):
    try:
        open(path)
    except OSError as e:
        print(path, e.errno)
with socket.create_connection(("127.0.0.1", local_port), timeout=5) as s:
    print("local", s.recv(10).decode())
addr = socket.getaddrinfo(svc, 8080, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
with socket.create_connection((addr, 8080), timeout=5) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("remote", s.recv(100).split(b"\\r\\n")[0].decode())
try:
    socket.create_connection((addr, 81), timeout=5)
except OSError as e:
    print("refused", e.errno)
srv = socket.socket(); srv.bind(("0.0.0.0", 7777)); srv.listen(1)
print("listening")
"""


def _local_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"here")

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def test_every_decision_is_traced_with_its_rule(world: World, tmp_path: Path) -> None:
    srv, port = _local_server()
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM))
    config = {
        "feature": {
            "env": {"override": {"EXPLAINED": "1"}},
            "fs": {"mode": "read", "not_found": ["^/nope/"], "read_only": ["^/typo-never/"]},
            "network": {
                "outgoing": {"filter": {"local": [f"tcp://127.0.0.1:{port}"]}},
                "incoming": "mirror",
            },
        }
    }
    cfg = tmp_path / "mirrord.json"
    cfg.write_text(json.dumps(config))
    trace = tmp_path / "trace.jsonl"
    try:
        r = subprocess.run(
            [MIRRORD, "exec", "-t", f"pid/{world.target.main_pid}", "-f", str(cfg),
             f"--explain={trace}", "--", PY, str(script), SVC_NAME, str(port)],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "hosts True",
        "/nope/secret 2",
        "/srv/missing.txt 2",
        "local here",
        "remote HTTP/1.0 200 OK",
        "refused 111",
        "listening",
    ]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    for rec in records:
        jsonschema.validate(rec, RECORD_SCHEMA)

    def one(kind: str, **match: object) -> dict[str, object]:
        found = [
            r for r in records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
        ]
        assert found, (kind, match, [r for r in records if r["kind"] == kind])
        return found[0]

    assert one("file", path=str(script))["decision"] == "local"
    assert one("file", path=str(script))["rule"].startswith("built-in local list")
    assert one("file", path="/etc/hosts")["decision"] == "remote-read-only"
    assert one("file", path="/nope/secret")["rule"] == "feature.fs.not_found[0] '^/nope/'"
    assert one("file", path="/nope/secret")["decision"] == "not-found"
    missing = one("file", path="/srv/missing.txt")
    assert missing["rule"] == "feature.fs.mode read (no rule matched)"
    assert one("file.result", path="/srv/missing.txt")["result"] == "ENOENT"
    local = one("connect", destination=f"127.0.0.1:{port}")
    assert local["decision"] == "local"
    assert local["rule"] == (f"feature.network.outgoing.filter.local[0] 'tcp://127.0.0.1:{port}'")
    svc = world.service.address
    assert one("connect", destination=f"{svc}:8080")["result"] == "connected"
    assert one("connect", destination=f"{svc}:8080")["rule"] == (
        "feature.network.outgoing.filter.local: no entry matched"
    )
    assert one("connect", destination=f"{svc}:81")["result"] == "ECONNREFUSED"
    dns = one("dns", name=SVC_NAME)
    assert dns["decision"] == "remote" and dns["answers"] == [svc]
    assert one("incoming", port=7777, event="subscribed")["decision"] == "mirror"
    assert one("env", name="EXPLAINED")["rule"] == "feature.env.override"

    # The summary: counts per kind as in the trace, the failures, the unused rule.
    summary = [line.removeprefix("mirrord: ") for line in r.stderr.splitlines()]
    counts = Counter(rec["kind"] for rec in records)
    for title, kind in (("files", "file"), ("outgoing", "connect"), ("DNS", "dns")):
        assert f"  {title}: {counts[kind]}" in summary, (title, summary)
    assert "    files: /srv/missing.txt: ENOENT" in summary
    assert f"    outgoing: tcp {svc}:81: ECONNREFUSED" in summary
    assert "  never matched: feature.fs.read_only[0] '^/typo-never/'" in summary
    assert not any("never matched: feature.fs.not_found" in line for line in summary)

    # `mirrord explain FILE` prints the same summary from the saved trace.
    again = subprocess.run([MIRRORD, "explain", str(trace)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    start = summary.index(next(line for line in summary if line.startswith("explain: ")))
    assert again.stdout.splitlines() == summary[start:]


def test_sigusr1_prints_the_summary_while_the_program_runs(world: World, tmp_path: Path) -> None:
    import os
    import signal
    import time

    env = {**os.environ, "MIRRORD_EXPLAIN": "1"}  # the flag's equivalent: summary only
    p = subprocess.Popen(
        [MIRRORD, "exec", "-t", f"pid/{world.target.main_pid}", "--",
         PY, "-c", "import time; open('/etc/hosts').read(); print('ready', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGUSR1)
        time.sleep(1)
        assert p.poll() is None  # SIGUSR1 did not end mirrord (its default action would)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    # Twice: on SIGUSR1, and at the end.
    assert err.count("mirrord: explain: ") == 2, err
    assert "remote-read-only" in err
