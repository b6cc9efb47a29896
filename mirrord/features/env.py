"""The program's environment: local variables overlaid with the target's, per `feature.env`.

Order of operations (upstream's, so the same config gives the same environment):

1. the target's variables, minus `ENV_FEATURE_DEFAULT_EXCLUDES` (always: they describe the
   target's machine, not the app), filtered by `include` (only these) or `exclude` (all but
   these); patterns match whole names, `*` any run of characters, `?` exactly one;
2. variables from `env_file` are added on top (they win over the target's);
3. `mapping` (regex searched in the name -> new value) rewrites the values of those
   variables; the first matching pattern, in file order, wins;
4. `override` sets its values (wins over the target's and over the env file);
5. the result overlays the local environment;
6. `unset` removes names, ignoring case, from the final result (local ones too).

`feature.env: false` leaves the local environment as it is.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from dotenv.parser import Binding, parse_stream
from dotenv.variables import parse_variables

from mirrord.config.errors import ConfigError
from mirrord.config.models import EnvConfig

# Upstream's agent never hands these out, whatever include says.
ENV_FEATURE_DEFAULT_EXCLUDES: tuple[str, ...] = (
    "BUNDLER_ORIG_BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_BUNDLER_VERSION",
    "BUNDLER_ORIG_BUNDLE_BIN_PATH",
    "BUNDLER_ORIG_BUNDLE_GEMFILE",
    "BUNDLER_ORIG_GEM_HOME",
    "BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_PATH",
    "BUNDLER_ORIG_RB_USER_INSTALL",
    "BUNDLER_ORIG_RUBYLIB",
    "BUNDLER_ORIG_RUBYOPT",
    "BUNDLER_VERSION",
    "BUNDLE_APP_CONFIG",
    "BUNDLE_BIN_PATH",
    "BUNDLE_FORCE_RUBY_PLATFORM",
    "BUNDLE_GEMFILE",
    "BUNDLE_GEM_PATH",
    "BUNDLE_PATH",
    "BUNDLE_WITHOUT",
    "CATALINA_HOME",
    "CLASSPATH",
    "DOTNET_EnableDiagnostics",
    "DOTNET_STARTUP_HOOKS",
    "GEM_HOME",
    "GEM_PATH",
    "GOPATH",
    "GOMODCACHE",
    "HOME",
    "HOMEPATH",
    "JAVA_EXE",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "PATH",
    "PWD",
    "PYTHONPATH",
    "RUBYLIB",
    "RUBYOPT",
    "MIRRORD_LOG",
    "RUST_LOG",
    "_JAVA_OPTIONS",
    "TEMP",
    "TMP",
    "TMPDIR",
)


def _read_text(path: str) -> str:
    return Path(path).expanduser().read_text(encoding="utf-8")


def merge_env(
    local: Mapping[str, str],
    remote: Mapping[str, str],
    cfg: EnvConfig | bool | None,
    *,
    read_file: Callable[[str], str] = _read_text,
) -> dict[str, str]:
    """The environment the program starts with (see the module docstring for the rules).

    `cfg` is `config.feature.env`: None or True mean the defaults, False means the target's
    environment is not used. `read_file` reads `env_file` (injectable for tests).
    Raises ConfigError when the env file cannot be read or parsed.
    """
    if cfg is False:
        return dict(local)
    settings = cfg if isinstance(cfg, EnvConfig) else EnvConfig()
    chosen = select_remote(remote, settings.include_list, settings.exclude_list)
    if settings.env_file:
        chosen.update(load_env_file(settings.env_file, read_file, local))
    for name in list(chosen):
        for pattern, value in (settings.mapping or {}).items():
            if re.search(pattern, name):
                chosen[name] = value
                break
    chosen.update(settings.override or {})
    result = dict(local)
    result.update(chosen)
    doomed = {name.upper() for name in settings.unset_list}
    return {name: value for name, value in result.items() if name.upper() not in doomed}


def env_decisions(
    remote: Mapping[str, str],
    cfg: EnvConfig | bool | None,
    env_file_names: Iterable[str] = (),
) -> list[tuple[str, str, str]]:
    """(name, decision, rule) for each variable `merge_env` takes from the target or the
    config, or leaves out, and the rule that decided (--explain). Pure."""
    if cfg is False:
        return [(name, "excluded", "feature.env off") for name in sorted(remote)]
    settings = cfg if isinstance(cfg, EnvConfig) else EnvConfig()
    out: list[tuple[str, str, str]] = []
    includes = settings.include_list
    for name in sorted(remote):
        default = next(
            (p for p in ENV_FEATURE_DEFAULT_EXCLUDES if _wildcard(p).fullmatch(name)), None
        )
        if default is not None:
            out.append((name, "excluded", f"default exclusion {default!r}"))
            continue
        index, pattern = _first_match(settings.exclude_list, name)
        if pattern is not None:
            out.append((name, "excluded", f"feature.env.exclude[{index}] {pattern!r}"))
            continue
        if includes:
            index, pattern = _first_match(includes, name)
            if pattern is None:
                out.append((name, "excluded", "feature.env.include: no pattern matched"))
                continue
            out.append((name, "remote", f"feature.env.include[{index}] {pattern!r}"))
        else:
            out.append((name, "remote", "the target's environment (default)"))
    out.extend(
        (n, "env_file", f"feature.env.env_file {settings.env_file!r}") for n in env_file_names
    )
    for index, pattern in enumerate(settings.mapping or {}):
        out.extend(
            (name, "mapping", f"feature.env.mapping[{index}] {pattern!r}")
            for name in sorted(remote)
            if re.search(pattern, name)
        )
    out.extend((n, "override", "feature.env.override") for n in (settings.override or {}))
    out.extend((n, "unset", f"feature.env.unset {n!r}") for n in settings.unset_list)
    return out


def env_rules(cfg: EnvConfig | bool | None) -> list[str]:
    """The user's env rules, as `env_decisions` names them (for the never-matched list)."""
    if not isinstance(cfg, EnvConfig):
        return []
    rules = [f"feature.env.exclude[{i}] {p!r}" for i, p in enumerate(cfg.exclude_list)]
    rules += [f"feature.env.include[{i}] {p!r}" for i, p in enumerate(cfg.include_list)]
    rules += [f"feature.env.mapping[{i}] {p!r}" for i, p in enumerate(cfg.mapping or {})]
    return rules


def _first_match(patterns: Sequence[str], name: str) -> tuple[int, str | None]:
    for index, pattern in enumerate(patterns):
        if _wildcard(pattern).fullmatch(name):
            return index, pattern
    return -1, None


def select_remote(
    remote: Mapping[str, str], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> dict[str, str]:
    """The target's variables that pass the default exclusions and include/exclude."""
    includes = [_wildcard(p) for p in include]
    excludes = [_wildcard(p) for p in (*ENV_FEATURE_DEFAULT_EXCLUDES, *exclude)]
    return {
        name: value
        for name, value in remote.items()
        if not any(p.fullmatch(name) for p in excludes)
        and (not includes or any(p.fullmatch(name) for p in includes))
    }


@lru_cache(maxsize=512)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """`*`/`?` wildcard as a regex; every other character is literal, case counts."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def load_env_file(
    path: str,
    read_file: Callable[[str], str] = _read_text,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Variables of a .env file, `${VAR}` expanded from `environ` (raises ConfigError
    naming the file and line)."""
    try:
        text = read_file(path)
    except FileNotFoundError:
        raise ConfigError(path, ["feature.env.env_file: file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, [f"feature.env.env_file: cannot read: {error}"]) from None
    return parse_dotenv(text, path, environ)


def parse_dotenv(
    text: str, source: str = "<env file>", environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Parse `.env` text as upstream's dotenv does, with python-dotenv's parser: `KEY=value`
    lines, `export` prefix, quotes, comments, multi-line double quotes, and `${VAR}` /
    `${VAR:-default}` expanded from earlier lines of the file, then from `environ` (the
    user's environment; default: this process's)."""
    env = os.environ if environ is None else environ
    result: dict[str, str] = {}
    errors: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error or (binding.key is not None and binding.value is None):
            text = _first_line(binding)
            what = "unterminated quote" if '"' in text or "'" in text else "expected KEY=value"
            errors.append(f"line {line}: {what}: {text!r}")
            continue
        if binding.key is None or binding.value is None:
            continue  # a comment or a blank line
        scope = {**env, **result}  # the file's own earlier values win, as python-dotenv's
        result[binding.key] = "".join(a.resolve(scope) for a in parse_variables(binding.value))
    if errors:
        raise ConfigError(source, errors)
    return result


def _first_line(binding: Binding) -> str:
    return binding.original.string.strip().splitlines()[0] if binding.original.string else ""
