"""A small subset of Tera, the template language upstream renders config files with.

Upstream renders the whole file as a template before parsing it, so `{{ ... }}` may appear
anywhere (the raw text is often not valid JSON until rendered). Supported here:

- `{{ get_env(name="X") }}`: the variable's value; an error naming X when it is unset;
- `{{ get_env(name="X", default="y") }}`: the value, or `y` when X is unset;
- string, number and boolean literals, either quote style (`"`, `'`, backtick);
- filters: `default(value=...)`, `lower`, `upper`, `trim`, `replace(from=..., to=...)`;
- `{# comments #}`, `{% raw %}...{% endraw %}`, and `{{-`/`-}}` whitespace trimming.

Anything else (`{% if %}`, `{% for %}`, variables) is reported as unsupported, with its
line and column, rather than rendered wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class TemplateError(Exception):
    """A template could not be rendered; `line` and `column` are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


_OPEN = re.compile(r"\{\{|\{%|\{#")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[(),=|])
    )""",
    re.VERBOSE,
)


@dataclass
class _Cursor:
    tokens: list[tuple[str, str]]
    pos: int = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end of expression")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        _kind, value = self.take()
        if value != text:
            raise ValueError(f"expected `{text}`, found `{value}`")


Value = str | int | float | bool | None


def render(text: str, environ: Mapping[str, str]) -> str:
    """Render the template `text`; `get_env` reads `environ`."""
    out: list[str] = []
    pos = 0
    while True:
        match = _OPEN.search(text, pos)
        if match is None:
            out.append(text[pos:])
            return "".join(out)
        start = match.start()
        opener = match.group()
        closer = {"{{": "}}", "{%": "%}", "{#": "#}"}[opener]
        end = text.find(closer, match.end())
        if end < 0:
            line, column = _position(text, start)
            raise TemplateError(f"`{opener}` is never closed by `{closer}`", line, column)
        inner = text[match.end() : end]
        literal = text[pos:start]
        if inner.startswith("-"):
            literal = literal.rstrip()
            inner = inner[1:]
        after = end + 2
        if inner.endswith("-"):
            inner = inner[:-1]
            while after < len(text) and text[after].isspace():
                after += 1
        out.append(literal)
        if opener == "{{":
            try:
                out.append(_to_text(_evaluate(inner, environ)))
            except ValueError as error:
                line, column = _position(text, start)
                raise TemplateError(f"in `{{{{{inner}}}}}`: {error}", line, column) from None
        elif opener == "{%":
            statement = inner.strip()
            if statement != "raw":
                line, column = _position(text, start)
                raise TemplateError(
                    f"template tag `{{% {statement} %}}` is not supported (only expressions, "
                    "comments and raw blocks are)",
                    line,
                    column,
                )
            raw_end = re.compile(r"\{%-?\s*endraw\s*-?%\}").search(text, after)
            if raw_end is None:
                line, column = _position(text, start)
                raise TemplateError("`{% raw %}` without `{% endraw %}`", line, column)
            out.append(text[after : raw_end.start()])
            after = raw_end.end()
        pos = after


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _tokenize(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if match is None:
            raise ValueError(f"unexpected `{source[pos:].strip()[:20]}`")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _evaluate(source: str, environ: Mapping[str, str]) -> Value:
    cursor = _Cursor(_tokenize(source))
    value = _primary(cursor, environ)
    while cursor.peek() is not None:
        cursor.expect("|")
        kind, name = cursor.take()
        if kind != "name":
            raise ValueError(f"expected a filter name after `|`, found `{name}`")
        args = _arguments(cursor) if cursor.peek() == ("punct", "(") else {}
        value = _filter(name, value, args)
    return value


def _primary(cursor: _Cursor, environ: Mapping[str, str]) -> Value:
    kind, text = cursor.take()
    if kind in ("str", "num"):
        return _literal(kind, text)
    if kind != "name":
        raise ValueError(f"unexpected `{text}`")
    if text in ("true", "false"):
        return text == "true"
    if cursor.peek() != ("punct", "("):
        raise ValueError(f"variable `{text}` is not defined (only get_env() is available)")
    args = _arguments(cursor)
    if text != "get_env":
        raise ValueError(f"function `{text}` is not supported (only get_env)")
    unknown = set(args) - {"name", "default"}
    if unknown:
        raise ValueError(f"get_env() takes name and default, not {', '.join(sorted(unknown))}")
    name = args.get("name")
    if not isinstance(name, str):
        raise ValueError('get_env() needs name="VARIABLE"')
    if name in environ:
        return environ[name]
    if "default" in args:
        return args["default"]
    raise ValueError(f"environment variable `{name}` is not set and no default is given")


def _arguments(cursor: _Cursor) -> dict[str, Value]:
    cursor.expect("(")
    args: dict[str, Value] = {}
    while cursor.peek() != ("punct", ")"):
        kind, key = cursor.take()
        if kind != "name":
            raise ValueError(f"expected an argument name, found `{key}`")
        cursor.expect("=")
        value_kind, value_text = cursor.take()
        if value_kind in ("str", "num"):
            args[key] = _literal(value_kind, value_text)
        elif value_kind == "name" and value_text in ("true", "false"):
            args[key] = value_text == "true"
        else:
            raise ValueError(f"argument `{key}` must be a literal value")
        if cursor.peek() == ("punct", ","):
            cursor.take()
    cursor.expect(")")
    return args


def _literal(kind: str, text: str) -> Value:
    if kind == "num":
        return float(text) if "." in text else int(text)
    body = text[1:-1]
    if text[0] == "`":
        return body
    # Tera strings take no escapes beyond the quote itself.
    return body.replace("\\" + text[0], text[0])


def _filter(name: str, value: Value, args: Mapping[str, Value]) -> Value:
    if name == "default":
        return args.get("value") if value is None else value
    text = _to_text(value)
    if name == "lower":
        return text.lower()
    if name == "upper":
        return text.upper()
    if name == "trim":
        return text.strip()
    if name == "replace":
        old, new = args.get("from"), args.get("to")
        if not isinstance(old, str) or not isinstance(new, str):
            raise ValueError('replace() needs from="..." and to="..."')
        return text.replace(old, new)
    raise ValueError(f"filter `{name}` is not supported")


def _to_text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
