"""Errors, warnings, templates, formats, flags and entry points of mirrord.config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mirrord.config import (
    IMPLEMENTED,
    ConfigError,
    ExecOverrides,
    apply_overrides,
    config_from_dict,
    config_json_schema,
    load_config_file,
    resolve_config,
    verify_config_file,
)
from mirrord.config.templates import TemplateError, render


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    return caught.value.errors


# --- errors --------------------------------------------------------------------------------


def test_unknown_key_names_its_path_and_a_close_match() -> None:
    assert errors_of({"feature": {"fs": {"mdoe": "read"}}}) == [
        "feature.fs.mdoe: unknown key (did you mean `mode`?)"
    ]
    assert errors_of({"feature": {"network": {"incoming": {"zzz": 1}}}}) == [
        "feature.network.incoming.zzz: unknown key"
    ]


def test_bad_enum_message() -> None:
    assert errors_of({"feature": {"network": {"incoming": {"mode": "stael"}}}}) == [
        "feature.network.incoming.mode: expected one of mirror, steal, off"
    ]


def test_union_errors_say_which_forms_are_accepted() -> None:
    (line,) = errors_of({"feature": {"network": {"incoming": 7}}})
    assert line.startswith("feature.network.incoming: expected true, false, one of mirror")
    (line,) = errors_of({"feature": {"env": "yes"}})
    assert line == "feature.env: expected true, false or an object, got 'yes'"
    (line,) = errors_of({"feature": {"fs": "raed"}})
    assert line == "feature.fs: expected one of local, localwithoverrides, read, write"


def test_all_errors_are_reported_at_once() -> None:
    lines = errors_of(
        {
            "targt": "pod/x",
            "agent": {"ttl": "30", "communication_timeout": 70000},
            "feature": {"hostname": "yes", "fs": {"mdoe": "read"}},
        }
    )
    assert sorted(lines) == [
        "agent.communication_timeout: must be at most 65535, got 70000",
        "agent.ttl: expected a whole number, got '30'",
        "feature.fs.mdoe: unknown key (did you mean `mode`?)",
        "feature.hostname: expected true or false, got 'yes'",
        "targt: unknown key (did you mean `target`?)",
    ]
    message = str(ConfigError("x.json", lines))
    assert message.splitlines()[0] == "x.json: 5 problems:"


def test_target_errors() -> None:
    (line,) = errors_of({"target": "pood/x"})
    assert line.startswith('target: \'pood/x\': expected "targetless", "pid/PID"')
    assert errors_of({"target": {"deployment": "d", "containr": "c"}}) == [
        "target.containr: unknown key (did you mean `container`?)"
    ]
    assert errors_of({"target": "pid/abc"}) == [
        "target: a local process target is pid/PID, e.g. pid/4242"
    ]


def test_env_include_and_exclude_conflict() -> None:
    assert errors_of({"feature": {"env": {"include": "A", "exclude": "B"}}}) == [
        "feature.env: include and exclude cannot both be set; use one of them"
    ]
    (line,) = errors_of({"feature": {"env": {"mapping": {"(": "x"}}}})
    assert line.startswith("feature.env: mapping key `(` is not a valid regex")


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(ConfigError):
        config_from_dict([1, 2])  # type: ignore[arg-type]


# --- the models ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, None),
        ("targetless", None),
        ("pod/p", "pod/p"),
        ("pod/p/container/c", "pod/p/container/c"),
        ("deploy/d", "deployment/d"),
        ("pid/4242", "pid/4242"),
        ({"path": "pod/p", "namespace": "ns"}, "pod/p"),
        ({"path": {"deployment": "d", "container": "c"}}, "deployment/d/container/c"),
        ({"stateful_set": "s"}, "statefulset/s"),
        ({"namespace": "ns"}, None),
        ({"path": None}, None),
    ],
)
def test_target_path_string(target: Any, expected: str | None) -> None:
    config, _ = config_from_dict({"target": target})
    assert config.target.path_string == expected


def test_target_parts() -> None:
    config, _ = config_from_dict({"target": {"path": "pod/p/container/c", "namespace": "ns"}})
    target = config.target
    assert (target.kind, target.name, target.container, target.namespace) == ("pod", "p", "c", "ns")


def test_defaults() -> None:
    config, warnings = config_from_dict({})
    assert warnings == []
    assert config.target.path_string is None
    assert config.feature.env_enabled and config.feature.hostname_enabled
    assert config.agent.startup_timeout_s == 60
    assert config.agent.communication_timeout_s == 30
    assert config.feature.fs_mode == "read"
    assert config.feature.incoming_mode == "mirror"


def test_effective_modes() -> None:
    config, _ = config_from_dict({"feature": {"network": {"incoming": "steal"}, "fs": False}})
    assert (config.feature.incoming_mode, config.feature.fs_mode) == ("steal", "local")
    config, _ = config_from_dict({"feature": {"network": False, "env": False, "hostname": False}})
    assert config.feature.incoming_mode == "off"
    assert not config.feature.env_enabled and not config.feature.hostname_enabled


# --- warnings ------------------------------------------------------------------------------


def test_warnings_for_unimplemented_and_no_effect_keys() -> None:
    _, warnings = config_from_dict(
        {
            "$schema": "https://example/schema.json",
            "target": "pod/p",
            "kube_context": "c",
            "agent": {"startup_timeout": 5, "namespace": "ns", "ttl": 30},
            "feature": {
                "env": {"include": "A", "load_from_process": True},
                "hostname": False,
                "network": {"incoming": {"mode": "steal", "http_header_filter": {"filter": "x"}}},
                "fs": False,
            },
            "operator": False,
            "pause": True,
        }
    )
    assert warnings == [
        "agent.ttl: has no effect here (the agent is a DaemonSet (or a local process) that "
        "outlives sessions); ignored",
        "feature.env.load_from_process: has no effect here "
        "(the environment is always fetched before start); ignored",
        "feature.network.incoming.http_header_filter: deprecated upstream, accepted and ignored "
        "(replaced upstream by feature.network.incoming.http_filter.header_filter)",
        "operator: has no effect here (the mirrord operator is not used); ignored",
        "pause: deprecated upstream, accepted and ignored (the pause feature was removed)",
    ]


def test_implemented_set_is_the_documented_one() -> None:
    assert "feature.env" in IMPLEMENTED and "target" in IMPLEMENTED


# --- templates -----------------------------------------------------------------------------


def test_get_env_forms() -> None:
    env = {"T": "pod/x"}
    assert render('{{ get_env(name="T") }}', env) == "pod/x"
    assert render("{{get_env(name='U', default='d')}}", env) == "d"
    assert render('{{ get_env(name="T", default="d") }}', env) == "pod/x"
    assert render('a {# note #}b {{- get_env(name="T") | upper -}} c', env) == "a bPOD/Xc"
    assert render("{% raw %}{{ x }}{% endraw %}", env) == "{{ x }}"
    assert render('{{ get_env(name="P", default=8080) }}', env) == "8080"


def test_template_errors_have_positions() -> None:
    with pytest.raises(TemplateError) as caught:
        render('{\n  "a": "{{ get_env(name="MISSING") }}"\n}', {})
    assert (caught.value.line, caught.value.column) == (2, 9)
    assert "`MISSING`" in caught.value.message
    with pytest.raises(TemplateError, match="not supported"):
        render("{% if x %}y{% endif %}", {})
    with pytest.raises(TemplateError, match="never closed"):
        render("{{ get_env(name='X')", {})


# --- formats -------------------------------------------------------------------------------

SAME_CONFIG = {
    ".json": '{"target": {"path": "pod/p", "namespace": "ns"},\n'
    ' "feature": {"env": {"include": "A;B", "override": {"X": "1"}},\n'
    ' "network": {"incoming": "off"}},\n'
    ' "agent": {"startup_timeout": 9}}',
    ".yaml": "target:\n  path: pod/p\n  namespace: ns\nfeature:\n  env:\n    include: A;B\n"
    "    override:\n      X: '1'\n  network:\n    incoming: off\nagent:\n  startup_timeout: 9\n",
    ".toml": '[target]\npath = "pod/p"\nnamespace = "ns"\n[feature.env]\ninclude = "A;B"\n'
    '[feature.env.override]\nX = "1"\n[feature.network]\nincoming = "off"\n'
    "[agent]\nstartup_timeout = 9\n",
}


def test_json_yaml_toml_give_the_same_model(tmp_path: Path) -> None:
    models = []
    for suffix, text in SAME_CONFIG.items():
        path = tmp_path / f"mirrord{suffix}"
        path.write_text(text)
        config, _ = verify_config_file(str(path), {})
        models.append(config)
    assert models[0] == models[1] == models[2]
    assert models[0].feature.incoming_mode == "off"  # YAML `off` stays a string


def test_jsonc_is_accepted_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        '{\n  // a comment\n  "target": "pod/p", /* more */\n  "feature": {"env": true,},\n}'
    )
    config, warnings = verify_config_file(str(path), {})
    assert config.target.path_string == "pod/p"
    assert any("comments and trailing commas" in w for w in warnings)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.json", '{"target": "pod/p",, "x": 1}', "line 1, column 20"),
        ("a.json", '{\n"a": 1\n"b": 2}', "line 3, column 1"),
        ("a.json", '{"a": 1, "a": 2}', "key `a` is given twice"),
        ("a.json", "", "empty"),
        ("a.json", "[1]", "top level must be an object"),
        ("a.yaml", "target: [\n", "line 2"),
        ("a.toml", "target = \n", "line 1"),
        ("a.ini", "x", "unknown config file extension"),
    ],
)
def test_parse_errors_name_file_and_position(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(str(path), {})
    assert caught.value.source == str(path)
    assert expected in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config_file(str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="directory"):
        load_config_file(str(tmp_path))


# --- flags and the entry point -------------------------------------------------------------


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps(
            {
                "target": "deployment/d",
                "feature": {"env": {"exclude": "X"}, "fs": {"mode": "read"}, "network": True},
                "agent": {"namespace": "a"},
            }
        )
    )
    flags = ExecOverrides(
        target="pod/p/container/c",
        namespace="ns",
        env_include="A;B",
        fs_mode="write",
        steal=True,
        no_udp_outgoing=True,
        agent_namespace="b",
        accept_invalid_certificates=True,
    )
    resolved = resolve_config(str(path), flags, {})
    config = resolved.config
    assert resolved.source == str(path)
    assert config.target.path_string == "pod/p/container/c"
    assert config.target.namespace == "ns"
    assert config.feature.env_config.include_list == ["A", "B"]
    assert config.feature.env_config.exclude is None
    assert config.feature.fs_mode == "write"
    assert config.feature.incoming_mode == "steal"
    assert config.agent.namespace == "b"
    assert config.accept_invalid_certificates is True


def test_apply_overrides_is_pure() -> None:
    raw = {"target": {"deployment": "d"}, "feature": {"env": False}}
    out = apply_overrides(raw, ExecOverrides(namespace="ns", env_exclude="S"))
    assert raw == {"target": {"deployment": "d"}, "feature": {"env": False}}
    assert out["target"] == {"path": {"deployment": "d"}, "namespace": "ns"}
    assert out["feature"]["env"] == {"exclude": "S"}
    assert apply_overrides(raw, ExecOverrides()) == raw


def test_bad_flag_is_blamed_on_the_flags() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(None, ExecOverrides(fs_mode="rw"), {})
    assert caught.value.source == "<flags>"
    assert caught.value.errors == [
        "feature.fs: expected one of local, localwithoverrides, read, write"
    ]


def test_mirrord_config_file_env(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("target: pod/from-env\n")
    resolved = resolve_config(None, ExecOverrides(), {"MIRRORD_CONFIG_FILE": str(path)})
    assert resolved.source == str(path)
    assert resolved.config.target.path_string == "pod/from-env"
    # -f wins over the variable.
    other = tmp_path / "o.json"
    other.write_text('{"target": "pod/from-flag"}')
    resolved = resolve_config(str(other), ExecOverrides(), {"MIRRORD_CONFIG_FILE": str(path)})
    assert resolved.config.target.path_string == "pod/from-flag"
    # No file at all: defaults plus flags.
    resolved = resolve_config(None, ExecOverrides(target="pid/42"), {})
    assert resolved.source is None and resolved.config.target.path_string == "pid/42"


def test_json_schema_is_ours() -> None:
    schema = config_json_schema()
    text = json.dumps(schema)
    assert schema["title"] == "mirrord (Python) configuration"
    assert "$schema" in schema["properties"] and "feature" in schema["properties"]
    assert "Seconds to wait for the agent to start" in text
