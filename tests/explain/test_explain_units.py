"""--explain without I/O: the summary, the schema, the rules named by fs and net rules, the
env decisions, and the flag's forms."""

from __future__ import annotations

import io
import json
import socket

import jsonschema
import pytest

from mirrord.cli.argv import normalize
from mirrord.config.models import EnvConfig
from mirrord.explain import Explainer, summarize_file
from mirrord.explain.schema import RECORD_SCHEMA
from mirrord.explain.summary import MAX_FAILURES, TraceError
from mirrord.features.env import env_decisions, env_rules
from mirrord.features.files.rules import Access, Context, FsRules
from mirrord.features.outgoing.filters import OutgoingRules


def test_records_are_json_lines_that_validate_and_add_up() -> None:
    out = io.StringIO()
    e = Explainer(out)
    e.declare(["feature.fs.read_only[0] '^/data'", "feature.fs.local[0] '^/typo'"])
    e.record(
        "file", path="/data/a", decision="remote-read-only", rule="feature.fs.read_only[0] '^/data'"
    )
    e.record(
        "file", path="/data/b", decision="remote-read-only", rule="feature.fs.read_only[0] '^/data'"
    )
    e.record("file.result", path="/data/b", result="ENOENT")
    e.record("connect", protocol="tcp", destination="10.0.0.1:80", decision="remote",
             rule="outgoing traffic is remote (default)", result="connected")  # fmt: skip
    e.record("dns", name="db", decision="remote", rule="DNS is remote (default)",
             answers=["10.0.0.2"], result="NOERROR")  # fmt: skip
    e.record("incoming", port=80, event="subscribed", decision="steal", rule="m", filter=None)
    e.record("env", name="A", decision="remote", rule="the target's environment (default)")
    lines = out.getvalue().splitlines()
    for line in lines:
        jsonschema.validate(json.loads(line), RECORD_SCHEMA)
    assert "filter" not in json.loads(lines[-2])  # None fields are left out
    summary = e.summary.lines()
    assert summary[0] == "explain: 6 decisions"
    assert "  files: 2" in summary and "  remote and failed: 1" in summary
    assert "    files: /data/b: ENOENT" in summary
    assert summary[-1] == "  never matched: feature.fs.local[0] '^/typo'"
    # A saved trace gives the same summary.
    assert summarize_file(lines).lines() == summary


def test_a_bad_record_is_refused_by_the_schema_and_the_reader() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "file", "t": 0, "path": "/x"}, RECORD_SCHEMA)
    with pytest.raises(TraceError, match="line 2: not JSON"):
        summarize_file(['{"kind": "rule", "t": 0, "rule": "r"}', "nope"], "t.jsonl")
    with pytest.raises(TraceError, match="not a mirrord --explain record"):
        summarize_file(["[1]"])


def test_failures_listed_are_bounded_but_counted() -> None:
    e = Explainer()
    for i in range(MAX_FAILURES + 7):
        e.record("file.result", path=f"/p{i}", result="ENOENT")
    lines = e.summary.lines()
    assert f"  remote and failed: {MAX_FAILURES + 7}" in lines
    assert "    … and 7 more" in lines


def test_a_full_disk_ends_the_trace_not_the_session() -> None:
    class Full(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    e = Explainer(Full())
    e.record("env", name="A", decision="remote", rule="r")
    e.record("env", name="B", decision="remote", rule="r")  # no second error
    assert "  environment: 2" in e.summary.lines()


def test_fs_rules_name_the_entry_that_decides() -> None:
    rules = FsRules.build(
        "read",
        read_only=["^/data", "^/srv"],
        not_found=["^/srv/secret"],
        mapping=[("^/old/(.*)", "/new/$1")],
        context=Context(cwd="/home/u/app", home="/home/u"),
    )
    seen: list[tuple[str, Access]] = []
    mapped: list[tuple[str, str, str]] = []
    rules.on_decide = lambda p, a: seen.append((p, a))
    rules.on_map = lambda p, m, r: mapped.append((p, m, r))
    assert rules.rule_for("/srv/x") == "feature.fs.read_only[1] '^/srv'"
    assert rules.rule_for("/srv/secret/k") == "feature.fs.not_found[0] '^/srv/secret'"
    assert rules.rule_for("/home/u/.kube/config").startswith("built-in not found (under $HOME)")
    assert rules.decide("/home/u/.kube/config") is Access.NOT_FOUND
    seen.clear()
    assert rules.rule_for("/var/empty/x") == "feature.fs.mode read (no rule matched)"
    rules.decide("/srv/x")
    rules.decide("/srv/x")  # memoised: told once
    assert seen == [("/srv/x", Access.READ_ONLY)]
    assert rules.map_path("/old/a") == "/new/a"
    assert mapped == [("/old/a", "/new/a", "feature.fs.mapping[0] '^/old/(.*)'")]
    assert rules.user_rules()[0] == "feature.fs.not_found[0] '^/srv/secret'"


def test_outgoing_rules_name_the_entry_or_the_default() -> None:
    rules = OutgoingRules.build(
        filter_mode="remote",
        filter_entries=["tcp://10.0.0.0/8:5432", "udp://:53"],
        dns_filter_mode="local",
        dns_filter_entries=["internal.corp"],
    )
    ip = socket.inet_aton
    never = lambda: False  # noqa: E731
    assert rules.rule_for("tcp", ip("10.1.2.3"), 5432, never) == (
        "feature.network.outgoing.filter.remote[0] 'tcp://10.0.0.0/8:5432'"
    )
    assert rules.rule_for("tcp", ip("10.1.2.3"), 80, never) == (
        "feature.network.outgoing.filter.remote: no entry matched"
    )
    assert rules.rule_for("tcp", ip("127.0.0.1"), 80, lambda: True) == (
        "the localhost rule (the program listens on that port)"
    )
    assert (
        rules.dns_rule_for("Internal.Corp.")
        == "feature.network.dns.filter.local[0] 'internal.corp'"
    )
    assert rules.dns_rule_for("x.org") == "feature.network.dns.filter.local: no entry matched"
    assert len(rules.user_rules()) == 3


def test_env_decisions_name_their_rule() -> None:
    cfg = EnvConfig(include="APP_*;DB_URL", override={"X": "1"}, unset="DB_URL")
    remote = {"APP_MODE": "k", "DB_URL": "u", "PATH": "/p", "OTHER": "o"}
    got = {(n, d): r for n, d, r in env_decisions(remote, cfg, ["FROM_FILE"])}
    assert got[("APP_MODE", "remote")] == "feature.env.include[0] 'APP_*'"
    assert got[("DB_URL", "remote")] == "feature.env.include[1] 'DB_URL'"
    assert got[("PATH", "excluded")] == "default exclusion 'PATH'"
    assert got[("OTHER", "excluded")] == "feature.env.include: no pattern matched"
    assert ("FROM_FILE", "env_file") in got and ("X", "override") in got
    assert got[("DB_URL", "unset")] == "feature.env.unset 'DB_URL'"
    assert env_rules(cfg) == ["feature.env.include[0] 'APP_*'", "feature.env.include[1] 'DB_URL'"]
    assert env_decisions({"A": "1"}, False) == [("A", "excluded", "feature.env off")]


def test_the_explain_flag_alone_means_the_summary() -> None:
    valued = {"-t"}.__contains__
    assert normalize(["--explain", "-t", "pid/1", "ls"], valued) == [
        "--explain=", "-t", "pid/1", "ls",
    ]  # fmt: skip
    assert normalize(["--explain=t.jsonl", "ls", "--explain"], valued) == [
        "--explain=t.jsonl", "ls", "--explain",
    ]  # fmt: skip


def test_the_documented_schema_is_the_one_in_the_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "explain.md").read_text()
    block = doc.split("## Schema of one record", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == RECORD_SCHEMA


def test_every_decision_of_a_path_when_asked() -> None:
    rules = FsRules.build("read")
    seen: list[str] = []
    rules.on_decide = lambda p, a: seen.append(p)
    rules.decide("/srv/a")
    rules.decide("/srv/a")
    assert seen == ["/srv/a"]
    rules.on_every = rules.on_decide
    rules.decide("/srv/a")
    assert seen == ["/srv/a", "/srv/a"]
