"""feature.network.incoming → what the supervisor and proxy get (pure)."""

from __future__ import annotations

import pytest

from mirrord.config import ConfigError, config_from_dict
from mirrord.features.incoming.config import incoming_config


def _cfg(incoming: object) -> object:
    config, _ = config_from_dict({"feature": {"network": {"incoming": incoming}}}, "<test>")
    return config


def test_default_is_mirror_and_off_is_none() -> None:
    found = incoming_config(_cfg("mirror"))  # type: ignore[arg-type]
    assert found is not None and found[1].mode == "mirror"
    assert incoming_config(_cfg("off")) is None  # type: ignore[arg-type]


def test_steal_with_a_header_filter() -> None:
    found = incoming_config(
        _cfg({"mode": "steal", "http_filter": {"header_filter": "x-user: me"}})  # type: ignore[arg-type]
    )
    assert found is not None
    _, settings = found
    assert settings.mode == "steal"
    assert settings.http_filter is not None
    assert settings.http_filter.header_filter == "x-user: me"


def test_unsupported_filter_conditions_are_a_config_error_naming_the_key() -> None:
    cfg = _cfg({"mode": "steal", "http_filter": {"all_of": [{"header": "a: b"}, {"query": "x=1"}]}})
    with pytest.raises(ConfigError) as info:
        incoming_config(cfg)  # type: ignore[arg-type]
    assert info.value.errors == [
        "feature.network.incoming.http_filter.all_of[1]: query and body conditions are not "
        "supported yet"
    ]
