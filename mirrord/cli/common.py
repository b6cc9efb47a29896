"""What every command shares: the user's environment as it was, error output, config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from mirrord import user_environ
from mirrord.say import say

if TYPE_CHECKING:
    from mirrord.config import ExecOverrides, MirrordConfig, ResolvedConfig

# The program (and the config's templates) must see the user's environment as it was,
# not what mirrord sets for itself (in main(), and mirrord/__init__.py's gRPC tuning).
ORIGINAL_ENV = user_environ()


err = say  # the CLI's name for it


def resolve_checked(config_file: str | None, overrides: ExecOverrides) -> ResolvedConfig:
    """The config as `exec` runs it: file (or MIRRORD_CONFIG_FILE) plus flags, validated by
    the models and by the features' own mappers. Raises ConfigError. `verify-config` calls
    this too, so what it calls OK, `exec` accepts."""
    from mirrord.config import FLAGS_SOURCE, ConfigError, resolve_config
    from mirrord.features.check import feature_errors

    resolved = resolve_config(config_file, overrides, ORIGINAL_ENV)
    errors = feature_errors(resolved.config)
    if errors:
        raise ConfigError(resolved.source or FLAGS_SOURCE, errors)
    return resolved


def load_config(config_file: str | None, overrides: ExecOverrides) -> MirrordConfig:
    """The resolved config (file, MIRRORD_CONFIG_FILE, flags); warnings printed; a bad
    config ends the command with exit code 2 and every error named by its key."""
    from mirrord.config import ConfigError

    try:
        resolved = resolve_checked(config_file, overrides)
    except ConfigError as exc:
        err(str(exc))
        raise typer.Exit(2) from None
    for warning in resolved.warnings:
        err(f"warning: {warning}")
    return resolved.config
