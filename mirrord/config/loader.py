"""Read a config file: render its templates, then parse JSON, YAML or TOML by extension.

Like upstream, the file is rendered as a Tera template first (see `templates`), and the
extension picks the format (`.json` or none: JSON; `.yaml`/`.yml`: YAML; `.toml`: TOML).

Leniency, decided on purpose (see docs/config.md):
- JSON: upstream parses strictly (serde_json), so `//` and `/* */` comments and trailing
  commas are errors there. We accept them, with a warning that upstream would refuse the
  file, because users copy such files from editors that allow them (JSONC).
- Duplicate keys are errors, as upstream (serde refuses a field given twice).
- YAML: parsed with libyaml when available (as upstream's serde_yaml, which allows tabs
  inside `{...}`), and only `true`/`false` are booleans: YAML 1.1's `on`/`off`/`yes`/`no`
  stay strings, so `incoming: off` means the mode "off", as upstream reads it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import select
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .templates import TemplateError, render

CONFIG_FILE_ENV = "MIRRORD_CONFIG_FILE"


def load_config_file(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings in a config file, templates rendered (raises ConfigError)."""
    raw, _ = load_config_file_with_warnings(path, environ)
    return raw


def load_config_file_with_warnings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """As `load_config_file`, plus warnings about leniency used (e.g. JSON comments)."""
    source = str(path)
    env = os.environ if environ is None else environ
    try:
        # utf-8-sig: editors on Windows save a BOM, which is not part of the settings.
        text = _read_bounded(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a config file"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            source, [f"not UTF-8 text ({error.reason} at byte {error.start})"]
        ) from None
    except _Unreadable as error:
        raise ConfigError(source, [str(error)]) from None
    except OSError as error:
        raise ConfigError(source, [f"cannot read: {error.strerror or error}"]) from None
    try:
        rendered = render(text, env)
    except TemplateError as error:
        raise ConfigError(
            source, [f"line {error.line}, column {error.column}: template: {error.message}"]
        ) from None
    suffix = Path(path).suffix.lower()
    warnings: list[str] = []
    if suffix in ("", ".json"):
        data = parse_json(rendered, source, warnings)
    elif suffix in (".yaml", ".yml"):
        data = parse_yaml(rendered, source)
    elif suffix == ".toml":
        data = parse_toml(rendered, source)
    else:
        raise ConfigError(
            source, [f"unknown config file extension {suffix!r}; use .json, .yaml, .yml or .toml"]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"the top level must be an object of settings, not {_kind(data)}"]
        )
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(source, [f"nested more than {MAX_DEPTH} levels deep"])
    return data, warnings


# A config is a few KiB and a few levels deep. Anything far beyond is a mistake (a wrong
# path, /dev/zero) or hostile: refuse it with bounded memory, time and recursion.
MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
READ_TIMEOUT_S = 10.0


class _Unreadable(Exception):
    pass


def _read_bounded(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, at most MAX_BYTES. A pipe or FIFO (`-f <(…)`) is read until its
    end for READ_TIMEOUT_S at most; a FIFO nobody writes to is an error, not a hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        kind = _special_kind(st.st_mode)
        if kind is not None and kind != "pipe":
            raise _Unreadable(f"is {kind}, not a config file")
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + READ_TIMEOUT_S
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Unreadable(
                        f"nothing more came from the pipe in {READ_TIMEOUT_S:.0f} s"
                    ) from None
                poller.poll(left * 1000)
                continue
            if not chunk:
                if kind == "pipe" and not chunks:
                    raise _Unreadable("is a pipe with nothing written to it")
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BYTES:
                raise _Unreadable(f"is larger than {MAX_BYTES // (1024 * 1024)} MiB")
            chunks.append(chunk)
    finally:
        os.close(fd)


def _special_kind(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _depth(data: Any) -> int:
    """How deeply lists and objects nest (iteratively: no recursion limit to hit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[int] = set()  # YAML aliases share nodes: visit each once
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _kind(data: Any) -> str:
    if isinstance(data, list):
        return "a list"
    if data is None:
        return "empty"
    return f"a {type(data).__name__} value"


# --- JSON ----------------------------------------------------------------------------------


def parse_json(text: str, source: str, warnings: list[str]) -> Any:
    """Parse JSON, accepting comments and trailing commas (recorded in `warnings`)."""
    if not text.strip():
        raise ConfigError(source, ["the file is empty; an empty config is `{}`"])
    cleaned, relaxed = _strip_jsonc(text)
    try:
        data = json.loads(cleaned, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as error:
        raise ConfigError(
            source, [f"line {error.lineno}, column {error.colno}: {_json_message(error.msg)}"]
        ) from None
    except _DuplicateKey as error:
        raise ConfigError(source, [f"key `{error.key}` is given twice in one object"]) from None
    except (ValueError, RecursionError) as error:
        raise ConfigError(source, [_limit_message(error)]) from None
    if relaxed:
        warnings.append(
            f"{source}: uses {' and '.join(relaxed)}, which upstream mirrord rejects "
            "(strict JSON); accepted here"
        )
    return data


def _json_message(message: str) -> str:
    # The stdlib's wording is terse; name the usual culprit.
    if message.startswith("Expecting ',' delimiter"):
        return "expected `,` or a closing bracket (a comma or brace is missing here)"
    if message.startswith("Expecting property name enclosed in double quotes"):
        return "expected a key in double quotes (a stray or doubled comma?)"
    if message.startswith("Expecting value"):
        return "expected a value (a doubled comma, a missing value, or unquoted text?)"
    if message.startswith("Extra data"):
        return "unexpected text after the end of the top-level object"
    return message


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _strip_jsonc(text: str) -> tuple[str, list[str]]:
    """Blank out comments and trailing commas, keeping every line and column in place."""
    out = list(text)
    relaxed: list[str] = []
    i, n = 0, len(text)
    last_comma: int | None = None  # index of a comma followed so far only by blanks
    while i < n:
        char = text[i]
        if char == '"':
            last_comma = None
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if char == "/" and i + 1 < n and text[i + 1] in "/*":
            end = text.find("\n", i) if text[i + 1] == "/" else text.find("*/", i + 2)
            end = n if end < 0 else (end if text[i + 1] == "/" else end + 2)
            for j in range(i, end):
                if out[j] != "\n":
                    out[j] = " "
            if "comments" not in relaxed:
                relaxed.append("comments")
            i = end
            continue
        if char == ",":
            last_comma = i
        elif char in "}]":
            if last_comma is not None:
                out[last_comma] = " "
                if "trailing commas" not in relaxed:
                    relaxed.append("trailing commas")
            last_comma = None
        elif not char.isspace():
            last_comma = None
        i += 1
    return "".join(out), relaxed


# --- YAML ----------------------------------------------------------------------------------


@functools.cache
def _yaml() -> tuple[Any, Any]:
    """PyYAML and a safe loader where only true/false (any case) are booleans, as in YAML
    1.2. Imported on the first YAML config: ~10 ms of every start-up otherwise."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader: Any = type("YamlLoader", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "tTfF":
        loader.add_implicit_resolver(
            "tag:yaml.org,2002:bool",
            re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
            list(first),
        )
    return yaml, loader


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML; an empty document is an empty config."""
    yaml, loader = _yaml()
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(source, [f"{where}{what or 'invalid YAML'}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError(source, [f"invalid YAML: {error}"]) from None
    except (ValueError, RecursionError) as error:
        raise ConfigError(source, [_limit_message(error)]) from None
    return {} if data is None else data


# --- TOML ----------------------------------------------------------------------------------


def parse_toml(text: str, source: str) -> Any:
    """Parse TOML (its error text already names line and column)."""
    import tomllib  # on the first TOML config only

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [f"invalid TOML: {error}"]) from None
    except (ValueError, RecursionError) as error:
        raise ConfigError(source, [_limit_message(error)]) from None


def _limit_message(error: Exception) -> str:
    """A parser's ValueError (a number of more than 4,300 digits) or RecursionError."""
    if isinstance(error, RecursionError):
        return f"nested more than {MAX_DEPTH} levels deep"
    if "digits" in str(error):
        return "a value is out of range: a number of more than 4,300 digits"
    return f"a value is out of range: {error}"
