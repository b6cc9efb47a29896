"""merge_env: upstream's rules for the program's environment."""

from __future__ import annotations

import pytest

from mirrord.config import ConfigError, EnvConfig
from mirrord.features.env import ENV_FEATURE_DEFAULT_EXCLUDES, merge_env, parse_dotenv

LOCAL = {"PATH": "/local/bin", "HOME": "/home/me", "LANG": "C", "SHARED": "local"}
REMOTE = {
    "PATH": "/remote/bin",
    "HOME": "/root",
    "PYTHONPATH": "/app",
    "JAVA_HOME": "/jvm",
    "SHARED": "remote",
    "DB_URL": "pg://db",
    "DB_USER": "app",
    "API_KEY": "k",
    "A1": "1",
    "A22": "22",
}


def env(**kwargs: object) -> EnvConfig:
    return EnvConfig.model_validate(kwargs)


def test_remote_overlays_local_minus_default_exclusions() -> None:
    merged = merge_env(LOCAL, REMOTE, None)
    assert merged["PATH"] == "/local/bin" and merged["HOME"] == "/home/me"
    assert "PYTHONPATH" not in merged and "JAVA_HOME" not in merged
    assert merged["SHARED"] == "remote" and merged["DB_URL"] == "pg://db"
    assert merged["LANG"] == "C"
    assert merge_env(LOCAL, REMOTE, True) == merged


def test_default_exclusions_are_upstreams() -> None:
    for name in ("PATH", "HOME", "PWD", "JAVA_HOME", "PYTHONPATH", "CLASSPATH", "TMPDIR"):
        assert name in ENV_FEATURE_DEFAULT_EXCLUDES
    # Even include cannot bring them back: the agent never sends them.
    assert "PATH" not in merge_env({}, REMOTE, env(include="PATH;DB_*"))


def test_env_false_uses_nothing_remote() -> None:
    assert merge_env(LOCAL, REMOTE, False) == LOCAL


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        ("DB_*", {"DB_URL", "DB_USER"}),
        ("DB_URL;API_KEY", {"DB_URL", "API_KEY"}),
        (["DB_URL", "API_*"], {"DB_URL", "API_KEY"}),
        ("A?", {"A1"}),
        ("A??", {"A22"}),
        ("db_*", set()),  # case counts
        ("^.*$", set()),  # not a regex: literal characters
    ],
)
def test_include(include: str | list[str], expected: set[str]) -> None:
    assert set(merge_env({}, REMOTE, env(include=include))) == expected


def test_exclude() -> None:
    merged = merge_env({}, REMOTE, env(exclude="DB_*;A?"))
    assert set(merged) == {"SHARED", "API_KEY", "A22"}
    assert set(merge_env({}, REMOTE, env(exclude=["*"]))) == set()


def test_override_wins_over_remote_and_env_file() -> None:
    files = {"app.env": "DB_URL=from-file\nFILE_ONLY='x y'\n"}
    cfg = env(env_file="app.env", override={"DB_URL": "mine", "NEW": "n"})
    merged = merge_env(LOCAL, REMOTE, cfg, read_file=files.__getitem__)
    assert merged["DB_URL"] == "mine" and merged["NEW"] == "n"
    assert merged["FILE_ONLY"] == "x y"


def test_env_file_wins_over_remote() -> None:
    files = {"e": 'export SHARED=file # trailing comment\nDB_USER="a\\nb"\n'}
    merged = merge_env(LOCAL, REMOTE, env(env_file="e"), read_file=files.__getitem__)
    assert merged["SHARED"] == "file"
    assert merged["DB_USER"] == "a\nb"


def test_unset_ignores_case_and_reaches_local_vars() -> None:
    local = {**LOCAL, "Aws_Profile": "dev", "AWS_PROFILE": "dev"}
    merged = merge_env(local, REMOTE, env(unset="aws_profile;DB_URL"))
    assert "Aws_Profile" not in merged and "AWS_PROFILE" not in merged
    assert "DB_URL" not in merged and "DB_USER" in merged


def test_mapping_rewrites_values_by_name_pattern() -> None:
    cfg = env(mapping={"^DB_": "redacted", "KEY$": "k2"}, override={"DB_USER": "o"})
    merged = merge_env({}, REMOTE, cfg)
    assert merged["DB_URL"] == "redacted"
    assert merged["API_KEY"] == "k2"
    assert merged["DB_USER"] == "o"  # override comes after mapping


def test_missing_or_bad_env_file() -> None:
    def missing(path: str) -> str:
        raise FileNotFoundError(path)

    with pytest.raises(ConfigError, match="not found"):
        merge_env({}, {}, env(env_file="nope.env"), read_file=missing)
    with pytest.raises(ConfigError) as caught:
        parse_dotenv('GOOD=1\nthis is not a pair\nX="open\n', "f.env")
    assert caught.value.errors == [
        "line 2: expected KEY=value: 'this is not a pair'",
        "line 3: unterminated quote: 'X=\"open'",
    ]


def test_dotenv_expands_variables_as_python_dotenv_does() -> None:
    text = (
        "A=1\n"
        "B=${A}-x\n"  # an earlier line of the file
        "C=${HOME_DIR}/bin\n"  # the user's environment
        'D="${MISSING:-fallback} ${A}"\n'  # a default; double quotes expand too
        "E=$A\n"  # python-dotenv expands only the braced form
        "A=2\n"
        "F=${A}\n"  # the latest value
        "export G=${C}\n"
    )
    got = parse_dotenv(text, "f.env", {"HOME_DIR": "/home/u", "A": "local"})
    assert got == {
        "A": "2",
        "B": "1-x",
        "C": "/home/u/bin",
        "D": "fallback 1",
        "E": "$A",
        "F": "2",
        "G": "/home/u/bin",
    }


def test_env_file_expands_from_the_local_environment() -> None:
    def read(path: str) -> str:
        return "URL=http://${HOST_ONLY}:8080\n"

    merged = merge_env({"HOST_ONLY": "10.0.0.9"}, {}, env(env_file="x.env"), read_file=read)
    assert merged["URL"] == "http://10.0.0.9:8080"


def test_dotenv_multiline_double_quotes() -> None:
    assert parse_dotenv('K="a\nb"\nL=2') == {"K": "a\nb", "L": "2"}
