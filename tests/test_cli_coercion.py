"""The command line's values are the same with the lazy coercion (cli/coercion.py) as with
typer's own, for text, lists, numbers and flags, and bad values get typer's own error;
what is not given builds nothing."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from mirrord.cli import coercion
from mirrord.cli.coercion import lazy_coercion
from mirrord.cli.main import app

ARGS = [
    ["-t", "pod/web", "-f", "m.json", "--agent-ttl", "5", "--steal", "--", "prog", "a", "-b"],
    ["--target", "pid/7", "prog"],
    [],
]


def parsed(args: list[str], lazy: bool) -> dict[str, Any]:
    cli = typer.main.get_command(app)
    if lazy:
        lazy_coercion(cli)
    exec_cmd = cli.commands["exec"]  # type: ignore[attr-defined]
    ctx = exec_cmd.make_context("exec", list(args))
    return dict(ctx.params)


@pytest.mark.parametrize("args", ARGS)
def test_values_are_typers(args: list[str]) -> None:
    assert parsed(args, lazy=True) == parsed(args, lazy=False)


def test_the_values_themselves() -> None:
    got = parsed(ARGS[0], lazy=True)
    assert got["target"] == "pod/web" and got["config_file"] == "m.json"
    assert got["agent_ttl"] == 5 and got["steal"] is True and got["no_outgoing"] is False
    assert got["command"] == ["prog", "a", "-b"]
    assert got["namespace"] is None


def test_a_bad_number_gets_typers_error() -> None:
    for lazy in (False, True):
        with pytest.raises(Exception) as exc:
            parsed(["--agent-ttl", "soon", "prog"], lazy)
        assert "agent-ttl" in str(getattr(exc.value, "format_message", lambda: exc.value)())


def test_nothing_is_built_for_what_was_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = typer.main.get_command(app)
    if lazy_coercion(cli) == 0:
        pytest.skip("this typer builds no per-parameter adapters")
    built: list[str] = []
    real = coercion._Lazy._typers

    def counting(self: Any) -> Any:
        built.append(self._param.name)
        return real(self)

    monkeypatch.setattr(coercion._Lazy, "_typers", counting)
    exec_cmd = cli.commands["exec"]  # type: ignore[attr-defined]
    exec_cmd.make_context("exec", ["-t", "pod/web", "--agent-ttl", "5", "prog"])
    assert built == ["agent_ttl"]  # the one number given; text and absent ones: none
