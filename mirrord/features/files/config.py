"""feature.fs (and whether DNS is remote) config → the supervisor's FsRules (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mirrord.config import ConfigError, MirrordConfig
from mirrord.config.errors import bad_regex
from mirrord.config.models import FsConfig, as_list
from mirrord.features.files.rules import Context, FsRules


def dns_remote(config: MirrordConfig) -> bool:
    """Upstream's default: names are resolved by the target (feature.network.dns on)."""
    return config.feature.dns_enabled


def fs_rules(
    config: MirrordConfig, program: str | None = None, environ: Mapping[str, str] | None = None
) -> FsRules | None:
    """None when nothing can be remote (fs mode local and DNS local): no traps at all."""
    env = os.environ if environ is None else environ
    fs = config.feature.fs
    cfg = fs if isinstance(fs, FsConfig) else FsConfig()
    ctx = Context(
        cwd=os.getcwd(),
        exe=os.path.realpath(program) if program else None,
        home=env.get("HOME"),
        tmpdir=env.get("TMPDIR") or "/tmp",
    )
    lists = {
        "read_write": as_list(cfg.read_write),
        "read_only": as_list(cfg.read_only),
        "local": as_list(cfg.local),
        "not_found": as_list(cfg.not_found),
    }
    checked = {**lists, "mapping": list(cfg.mapping or {})}
    found = (bad_regex(f"feature.fs.{name}", p) for name, ps in checked.items() for p in ps)
    errors = [e for e in found if e is not None]
    if errors:
        raise ConfigError("<config>", errors)
    rules = FsRules.build(
        config.feature.fs_mode,
        **lists,
        mapping=list((cfg.mapping or {}).items()),
        dns_remote=dns_remote(config),
        context=ctx,
    )
    return rules if rules.anything_remote else None
