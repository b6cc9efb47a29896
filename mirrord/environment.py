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

import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path

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
        chosen.update(load_env_file(settings.env_file, read_file))
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


def load_env_file(path: str, read_file: Callable[[str], str] = _read_text) -> dict[str, str]:
    """Variables of a .env file (raises ConfigError naming the file and line)."""
    try:
        text = read_file(path)
    except FileNotFoundError:
        raise ConfigError(path, ["feature.env.env_file: file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, [f"feature.env.env_file: cannot read: {error}"]) from None
    return parse_dotenv(text, path)


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def parse_dotenv(text: str, source: str = "<env file>") -> dict[str, str]:
    """Parse `.env` text: `KEY=value` lines, `export` prefix, quotes, `#` comments.

    Double-quoted values understand `\\n`, `\\t`, `\\"` and `\\\\` and may span lines;
    single-quoted values are literal; unquoted values end at ` #`. No `${VAR}` expansion.
    """
    result: dict[str, str] = {}
    errors: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            errors.append(f"line {number}: expected KEY=value")
            continue
        rest = rest.strip()
        if rest[:1] == '"':
            body = rest[1:]
            # A double-quoted value may continue on the following lines.
            while not _closed(body) and index < len(lines):
                body += "\n" + lines[index]
                index += 1
            if not _closed(body):
                errors.append(f"line {number}: unterminated double quote")
                continue
            end = _closing_quote(body)
            result[key] = _unescape(body[:end])
        elif rest[:1] == "'":
            end = rest.find("'", 1)
            if end < 0:
                errors.append(f"line {number}: unterminated single quote")
                continue
            result[key] = rest[1:end]
        else:
            value = re.split(r"\s+#", rest, maxsplit=1)[0]
            result[key] = value.strip()
    if errors:
        raise ConfigError(source, errors)
    return result


def _closing_quote(body: str) -> int:
    i = 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == '"':
            return i
        i += 1
    return -1


def _closed(body: str) -> bool:
    return _closing_quote(body) >= 0


def _unescape(value: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), value)
