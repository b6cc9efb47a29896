"""`mirrord` command line: exec, verify-config, schema; ls and agent (in kube_cmds).

Heavy modules (grpc, the supervisor) are imported inside the commands that need them, so
`mirrord --help` and `verify-config` start quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Annotated

import typer

from mirrord import __version__
from mirrord.cli.common import ORIGINAL_ENV, err, load_config
from mirrord.cli.kube_cmds import register as register_kube_commands
from mirrord.cli.portforward_cmd import register as register_port_forward

app = typer.Typer(
    name="mirrord",
    help="Run a local program in the context of a remote target: its environment, "
    "hostname (and later files, network and incoming traffic).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"mirrord {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True)
    ] = False,
) -> None:
    pass


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_(
    command: Annotated[list[str], typer.Argument(help="The program and its arguments.")],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="pid/N, targetless, or pod/NAME…")
    ] = None,
    config_file: Annotated[
        str | None,
        typer.Option("--config-file", "-f", help="mirrord.json / .yaml / .toml"),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--target-namespace", "-n", help="Target's namespace.")
    ] = None,
    env_include: Annotated[
        str | None,
        typer.Option(
            "--override-env-vars-include", "-s", help="Remote env vars to include (a;b*)."
        ),
    ] = None,
    env_exclude: Annotated[
        str | None,
        typer.Option(
            "--override-env-vars-exclude", "-x", help="Remote env vars to exclude (a;b*)."
        ),
    ] = None,
    fs_mode: Annotated[
        str | None, typer.Option("--fs-mode", help="local, localwithoverrides, read, write")
    ] = None,
    steal: Annotated[bool, typer.Option("--steal", help="Steal incoming traffic.")] = False,
    steal_probes: Annotated[
        bool,
        typer.Option(
            "--steal-probes",
            help="A steal takes the pod's kubelet probes too (by default their requests "
            "from the node stay with the pod).",
        ),
    ] = False,
    no_outgoing: Annotated[
        bool, typer.Option("--no-outgoing", help="Keep outgoing traffic local.")
    ] = False,
    no_udp_outgoing: Annotated[
        bool, typer.Option("--no-udp-outgoing", help="Keep outgoing UDP local.")
    ] = False,
    env_file: Annotated[
        str | None, typer.Option("--env-file", help="A .env file applied to the env.")
    ] = None,
    no_tcp_outgoing: Annotated[
        bool, typer.Option("--no-tcp-outgoing", help="Keep outgoing TCP local.")
    ] = False,
    no_remote_dns: Annotated[
        bool, typer.Option("--no-remote-dns", help="Resolve names locally.")
    ] = False,
    agent_startup_timeout: Annotated[
        int | None, typer.Option("--agent-startup-timeout", help="Seconds to wait for the agent.")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kube context.")] = None,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig.")] = None,
    agent_address: Annotated[
        str | None,
        typer.Option(
            "--agent-address",
            help="HOST:PORT of a running agent (token from MIRRORD_AGENT_TOKEN or "
            "--agent-token-file) instead of starting a local one.",
        ),
    ] = None,
    agent_token_file: Annotated[
        str | None, typer.Option("--agent-token-file", help="File holding the agent token.")
    ] = None,
) -> None:
    """Run COMMAND with the target's environment (use -- before COMMAND)."""
    from mirrord.config import ExecOverrides

    overrides = ExecOverrides(
        target=target,
        namespace=namespace,
        env_include=env_include,
        env_exclude=env_exclude,
        fs_mode=fs_mode,
        steal=steal,
        no_outgoing=no_outgoing,
        no_udp_outgoing=no_udp_outgoing,
        env_file=env_file,
        no_tcp_outgoing=no_tcp_outgoing,
        no_remote_dns=no_remote_dns,
        agent_startup_timeout=agent_startup_timeout,
        kube_context=context,
        kubeconfig=kubeconfig,
    )
    config = load_config(config_file, overrides)
    if not command:
        err("no program given: mirrord exec [OPTIONS] -- PROGRAM [ARGS…]")
        raise typer.Exit(2)
    endpoint = None
    if agent_address is not None:
        endpoint = _agent_endpoint(agent_address, agent_token_file)
    code = _run(command, config, endpoint, steal_probes)
    raise typer.Exit(code)


def _agent_endpoint(address: str, token_file: str | None) -> object:
    from mirrord.run import AgentEndpoint

    if token_file is not None:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            err(f"cannot read the agent token file {token_file}: {exc.strerror}")
            raise typer.Exit(2) from None
    else:
        token = os.environ.get("MIRRORD_AGENT_TOKEN", "")
    if not token:
        err(
            "--agent-address needs the agent's token: set MIRRORD_AGENT_TOKEN or "
            "pass --agent-token-file"
        )
        raise typer.Exit(2)
    return AgentEndpoint(address, token)


def _run(command: list[str], config: object, endpoint: object, steal_probes: bool) -> int:
    from mirrord.run import ExecError, run_exec
    from mirrord.supervisor import exit_like

    try:
        status = asyncio.run(
            run_exec(
                command,
                config,  # type: ignore[arg-type]
                agent=endpoint,  # type: ignore[arg-type]
                environ=ORIGINAL_ENV,
                steal_probes=steal_probes,
            )
        )
    except ExecError as exc:
        if exc.message is not None:
            err(exc.message)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        err("interrupted before the program started")
        return 130
    sys.stdout.flush()
    return exit_like(status.code, status.signal)


@app.command("verify-config")
def verify_config(
    path: Annotated[str, typer.Argument(help="mirrord.json / .yaml / .toml")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """Check a config file: OK, or every error with its key path."""
    from mirrord.config import ConfigError, verify_config_file

    try:
        _config, warnings = verify_config_file(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"type": "Fail", "errors": exc.errors, "source": exc.source}))
        else:
            err(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"type": "Success", "warnings": warnings}))
        return
    for w in warnings:
        err(f"warning: {w}")
    print(f"{path}: OK")


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the config file."""
    from mirrord.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))


# ls, agent serve|install|uninstall|status
register_kube_commands(app)
register_port_forward(app)


def main() -> None:
    # gRPC's fork handlers would complain (and do nothing useful) when the tracer forks
    # the program: the child only execs.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()
