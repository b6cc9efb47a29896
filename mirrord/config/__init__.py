"""The mirrord configuration: upstream's config file format, flags, and what we support.

Entry points for the CLI:

- `resolve_config(config_file, overrides, environ)`: file (or `MIRRORD_CONFIG_FILE`) plus
  flags -> `ResolvedConfig(config, warnings, source)`, or `ConfigError`;
- `verify_config_file(path)`: `(config, warnings)` or `ConfigError`;
- `config_json_schema()`: the JSON schema of what we accept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .loader import CONFIG_FILE_ENV, load_config_file, load_config_file_with_warnings
from .models import (
    HTTP_FILTER_KINDS,
    AgentConfig,
    EnvConfig,
    FeatureConfig,
    FsConfig,
    HttpFilterConfig,
    IncomingConfig,
    MirrordConfig,
    NetworkConfig,
    OutgoingConfig,
    TargetConfig,
)
from .overrides import ExecOverrides, apply_overrides
from .support import IMPLEMENTED, support_warnings
from .validate import validate_config

__all__ = [
    "CONFIG_FILE_ENV",
    "FLAGS_SOURCE",
    "IMPLEMENTED",
    "AgentConfig",
    "ConfigError",
    "EnvConfig",
    "ExecOverrides",
    "FeatureConfig",
    "FsConfig",
    "IncomingConfig",
    "MirrordConfig",
    "NetworkConfig",
    "OutgoingConfig",
    "ResolvedConfig",
    "TargetConfig",
    "apply_overrides",
    "config_from_dict",
    "config_json_schema",
    "load_config_file",
    "resolve_config",
    "verify_config_file",
]

FLAGS_SOURCE = "<flags>"


@dataclass(frozen=True)
class ResolvedConfig:
    """The validated config, what to tell the user about it, and where it came from."""

    config: MirrordConfig
    warnings: list[str] = field(default_factory=list)
    source: str | None = None  # the config file used, if any


def config_from_dict(
    raw: Mapping[str, Any], source: str = "<config>"
) -> tuple[MirrordConfig, list[str]]:
    """Validate already-parsed settings: `(config, warnings)` or `ConfigError`."""
    config, errors = validate_config(raw)
    if config is None:
        raise ConfigError(source, errors)
    return config, _extra_warnings(config) + support_warnings(raw)


def _extra_warnings(config: MirrordConfig) -> list[str]:
    warnings: list[str] = []
    incoming = config.feature.network_config.incoming
    if (
        isinstance(incoming, IncomingConfig)
        and isinstance(incoming.http_filter, HttpFilterConfig)
        and any(getattr(incoming.http_filter, kind) is not None for kind in HTTP_FILTER_KINDS)
        and config.feature.incoming_mode == "mirror"
    ):
        warnings.append(
            "feature.network.incoming.http_filter: applies to steal mode only; mirror "
            "mode mirrors whole connections"
        )
    path = config.target.path
    if path is not None and not isinstance(path, str):
        name = config.target.name
        if not name:
            warnings.append("target.path: the target name is empty; no target can match it")
    return warnings


def resolve_config(
    config_file: str | None,
    overrides: ExecOverrides,
    environ: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Load `config_file` (or the file named by MIRRORD_CONFIG_FILE), apply the flags, validate.

    Raises ConfigError naming the file, or `<flags>` when a flag's value is the problem.
    """
    env = os.environ if environ is None else environ
    path = config_file or env.get(CONFIG_FILE_ENV) or None
    # Check the flags alone first, so a bad flag is blamed on the flags, not the file.
    flags_only = apply_overrides({}, overrides)
    _, flag_errors = validate_config(flags_only)
    if flag_errors:
        raise ConfigError(FLAGS_SOURCE, flag_errors)
    raw: dict[str, Any] = {}
    load_warnings: list[str] = []
    if path is not None:
        raw, load_warnings = load_config_file_with_warnings(path, env)
    merged = apply_overrides(raw, overrides)
    config, warnings = config_from_dict(merged, path or FLAGS_SOURCE)
    return ResolvedConfig(config=config, warnings=load_warnings + warnings, source=path)


def verify_config_file(
    path: str, environ: Mapping[str, str] | None = None
) -> tuple[MirrordConfig, list[str]]:
    """Check a config file as `mirrord verify-config` does: `(config, warnings)`."""
    raw, load_warnings = load_config_file_with_warnings(path, environ)
    config, warnings = config_from_dict(raw, path)
    return config, load_warnings + warnings


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config we accept (our models, our descriptions)."""
    schema = MirrordConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mirrord (Python) configuration"
    return schema
