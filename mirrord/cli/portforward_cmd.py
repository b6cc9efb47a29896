"""`mirrord port-forward`: the command line of mirrord/portforward.py."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("port-forward")(port_forward)


def port_forward(
    forwards: Annotated[
        list[str],
        typer.Option("-L", "--port-mapping", help="[LPORT:]HOST:RPORT, repeatable."),
    ],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="pid/N or targetless.")
    ] = None,
    config_file: Annotated[
        str | None, typer.Option("--config-file", "-f", help="mirrord.json / .yaml / .toml")
    ] = None,
    agent_address: Annotated[
        str | None,
        typer.Option(
            "--agent-address", help="HOST:PORT of a running agent (token in MIRRORD_AGENT_TOKEN)."
        ),
    ] = None,
) -> None:
    """Forward local ports to HOST:RPORT as reached from the target's network."""
    from mirrord.client.errors import AgentError
    from mirrord.config import ConfigError, ExecOverrides, resolve_config
    from mirrord.portforward import PortForwardError, parse_spec, run_port_forward
    from mirrord.target import TargetError, parse_target

    def fail(msg: str, code: int = 2) -> typer.Exit:
        print(f"mirrord: {msg}", file=sys.stderr, flush=True)
        return typer.Exit(code)

    try:
        specs = [parse_spec(f) for f in forwards]
        resolved = resolve_config(config_file, ExecOverrides(target=target), dict(os.environ))
        parsed = parse_target(resolved.config.target.path_string)
    except (PortForwardError, ConfigError, TargetError) as e:
        raise fail(str(e)) from None
    token = os.environ.get("MIRRORD_AGENT_TOKEN") if agent_address else None
    if agent_address is None and os.geteuid() != 0:
        raise fail("a local agent needs root; run as root or pass --agent-address", 1)
    try:
        code = asyncio.run(
            run_port_forward(
                specs,
                parsed.pid,
                agent_address=agent_address,
                agent_token=token,
                startup_timeout=float(resolved.config.agent.startup_timeout_s),
            )
        )
    except (AgentError, PortForwardError) as e:
        raise fail(str(e), 1) from None
    raise typer.Exit(code)
