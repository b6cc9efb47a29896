"""The 122 real config files from public repositories: valid ones load, broken ones fail well."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrord.config import ConfigError, verify_config_file
from tests.shared_data import AVAILABLE, MISSING_REASON, UPSTREAM

if not AVAILABLE:
    pytest.skip(MISSING_REASON, allow_module_level=True)
CONFIGS = UPSTREAM / "configs"
FILES = sorted(p for p in CONFIGS.iterdir() if p.name != "INDEX.tsv")
# Templates in these files read TARGET and PWD; give PWD only, as a shell would.
ENVIRON = {"PWD": "/home/dev/app"}

# Files that are not valid configs, and why. Each must fail with ConfigError naming the file
# and the line (syntax) or key (schema) at fault.
BROKEN: dict[str, tuple[str, str]] = {
    "AbsoluteZeroist__client__.mirrord__mirrord.json": ("line 6", "`falsfalsee` is no value"),
    "Anita-ihuman__weather-app__mirrord.json": ("line 9", "closing brace missing"),
    "Skateug30__wrapper-validation-action__.mirrord__mirrord.json": (
        "line 11",
        "a pasted Gradle snippet after the settings",
    ),
    "itsjhonny__vscode-settings__mirrord.json": ("line 10", "doubled comma"),
    "jakepage91__honey-the-audience-broke-my-app__mirrord.json": (
        "target.path.namespace",
        "namespace put inside the path object, where upstream also rejects it",
    ),
}


def test_the_data_is_all_there() -> None:
    assert len(FILES) == 122
    for name in BROKEN:
        assert (CONFIGS / name).exists(), name


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_real_config(path: Path) -> None:
    if path.name in BROKEN:
        where, _why = BROKEN[path.name]
        with pytest.raises(ConfigError) as caught:
            verify_config_file(str(path), ENVIRON)
        message = str(caught.value)
        assert caught.value.source == str(path)
        assert str(path) in message
        assert where in message, message
        assert "Traceback" not in message
    else:
        config, warnings = verify_config_file(str(path), ENVIRON)
        assert all(isinstance(w, str) and w for w in warnings)
        # Every file resolves its target to a normalized string or targetless.
        text = config.target.path_string
        assert text is None or "/" in text


def test_template_defaults_are_used() -> None:
    config, _ = verify_config_file(
        str(CONFIGS / "odysseia-greek__agora__.mirrord__mirrord.json"), {}
    )
    assert config.target.path_string == "deployment/theofrastos/container/theofrastos"
    config, _ = verify_config_file(
        str(CONFIGS / "odysseia-greek__agora__.mirrord__mirrord.json"), {"TARGET": "pod/p"}
    )
    assert config.target.path_string == "pod/p"


def test_template_without_default_needs_the_variable() -> None:
    path = CONFIGS / "attilaersek__mirrord-php-poc__.mirrord__mirrord.json"
    with pytest.raises(ConfigError) as caught:
        verify_config_file(str(path), {})
    assert "`PWD`" in str(caught.value)
    assert "line 11" in str(caught.value)


def test_deprecated_and_lenient_files_warn() -> None:
    _, warnings = verify_config_file(str(CONFIGS / "linode__provider-ceph__.mirrord__mirrord.json"))
    assert any(w.startswith("pause: deprecated") for w in warnings)
    _, warnings = verify_config_file(str(CONFIGS / "konflux-ci__caching__.mirrord__mirrord.json"))
    assert any(w.startswith("experimental.vfork_emulation: deprecated") for w in warnings)
    _, warnings = verify_config_file(
        str(CONFIGS / "dever-labs__dotnet10-service-template__.mirrord__mirrord.json")
    )
    assert any("comments" in w and "upstream mirrord rejects" in w for w in warnings)


def test_yaml_with_tabs_in_flow_style_loads() -> None:
    # JSON text with tabs in a .yaml file: libyaml (upstream's parser too) accepts it.
    config, _ = verify_config_file(str(CONFIGS / "dosquad__database-operator__mirrord.yaml"))
    assert config.feature.env_config.include == "*"
    assert config.feature.env_config.override == {"DEBUG": "true"}


# Keys of real configs that this version truly does not act on yet (each a true warning).
NOT_BUILT = {"agent.flush_connections", "agent.service_account"}


def test_the_corpus_passes_exec_validation_with_only_true_warnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`exec` and `verify-config` validate through one path (the models, then the feature
    mappers): every valid real config passes it, and no warning calls something unbuilt
    that is built (e.g. `"network": true`, which 10 of these files set)."""
    from mirrord.cli import common
    from mirrord.config import ExecOverrides

    for key, value in ENVIRON.items():
        monkeypatch.setitem(common.ORIGINAL_ENV, key, value)
    unbuilt: set[str] = set()
    for path in FILES:
        if path.name in BROKEN:
            continue
        resolved = common.resolve_checked(str(path), ExecOverrides())
        unbuilt |= {w.split(":")[0] for w in resolved.warnings if "not supported yet" in w}
    assert unbuilt <= NOT_BUILT, unbuilt - NOT_BUILT
