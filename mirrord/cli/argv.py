"""Upstream's command-line forms that click cannot parse, rewritten before click sees them.

Upstream (clap) has two options with an optional value that click has no form for:
- `-f/--config-file [FILE]`: alone, it means `./.mirrord/mirrord.json`;
- `-c/--accept-invalid-certificates[=BOOL]`: alone, true; a value only after `=`.
Ours has one: `--explain[=FILE]`.

Pure: `normalize(args, takes_value)` returns a new list; only the options before the
program (before `--` or the first positional argument) are looked at. `option_values`
reads a few options' values from a normalized line before click does (`mirrord exec`
decides from them to spawn its local agent at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_CONFIG_FILE = "./.mirrord/mirrord.json"
CONFIG_OPTS = ("-f", "--config-file")
CERT_OPTS = ("-c", "--accept-invalid-certificates")
CERT_LONG = "--accept-invalid-certificates"
EXPLAIN = "--explain"  # ours: alone, the summary only; =FILE, the JSON lines too

# Subcommands whose options include the two above.
COMMANDS = frozenset({"exec", "port-forward"})


def normalize(args: Sequence[str], takes_value: Callable[[str], bool]) -> list[str]:
    """`args` after the subcommand's name. `takes_value(option)`: whether that option of
    the subcommand consumes the next argument (unknown options: False)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            out.append(arg)
            out.extend(args[i:])  # the program and its arguments: untouched
            return out
        if arg in CONFIG_OPTS:
            following = args[i] if i < len(args) else None
            if following is None or following.startswith("-"):
                out.append(f"--config-file={DEFAULT_CONFIG_FILE}")
            else:
                out.extend(("--config-file", following))
                i += 1
            continue
        if arg == EXPLAIN:
            out.append(f"{EXPLAIN}=")
            continue
        name, eq, value = arg.partition("=")
        if name in CERT_OPTS:
            out.append(f"{CERT_LONG}={value if eq else 'true'}")
            continue
        out.append(arg)
        if not eq and takes_value(arg) and i < len(args):
            out.append(args[i])
            i += 1
    return out


def parse_bool(text: str) -> bool | None:
    """clap's bool values: true/false (any case); None when it is neither."""
    return {"true": True, "false": False}.get(text.strip().lower())


def option_values(
    args: Sequence[str], names: dict[str, str], takes_value: Callable[[str], bool]
) -> dict[str, str] | None:
    """The values of the valued options in `names` (option string -> name, e.g. "-t" ->
    "target"), given before the program in normalized `args`, as click reads them: the
    last one wins; other options skip their value (`takes_value`, as for normalize).
    None when the line is not plain enough to tell (an option without its value)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name in names and arg.startswith("--"):
            if not eq:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            out[names[name]] = value
        elif arg[:2] in names and not arg.startswith("--"):
            if len(arg) > 2:
                out[names[arg[:2]]] = arg[2:]  # -tVALUE
            elif i < len(args):
                out[names[arg]] = args[i]
                i += 1
            else:
                return None
        elif not eq and takes_value(arg):
            if i >= len(args):
                return None
            i += 1
    return out
