"""What `mirrord exec` would reject in a valid-looking config, found before it starts.

The config models check shapes and types; the features' own mappers (the code `exec` runs
to build its rules) check the rest: regexes, filter entries, HTTP filter conditions. Both
`exec` and `verify-config` call `feature_errors`, so "OK" from one is "OK" for the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mirrord.config import ConfigError, MirrordConfig


def feature_errors(config: MirrordConfig) -> list[str]:
    """Every error the feature mappers find, as `key.path: what is wrong` lines."""
    from mirrord.features.files.config import fs_rules
    from mirrord.features.incoming.config import incoming_config
    from mirrord.features.outgoing.config import outgoing_rules

    mappers: tuple[Callable[[MirrordConfig], Any], ...] = (
        outgoing_rules,
        fs_rules,
        incoming_config,
    )
    errors: list[str] = []
    for mapper in mappers:
        try:
            mapper(config)
        except ConfigError as exc:
            errors.extend(e for e in exc.errors if e not in errors)
    return errors


__all__ = ["feature_errors"]
