"""`mirrord port-forward`: the command line of mirrord/portforward/ (upstream 3.250's flags:
PortForwardArgs with TargetParams and AgentParams, plus our --kubeconfig, --agent-address
and --agent-token-file, as `mirrord exec` has them)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from mirrord.cli import options as opt
from mirrord.cli.common import ORIGINAL_ENV, err, load_config

L_HELP = (
    "[LPORT:]HOST:RPORT, repeatable: 127.0.0.1:LPORT here to HOST:RPORT from the target's "
    "network (HOST resolved there; LPORT defaults to RPORT)."
)
R_HELP = (
    "[REMOTE_PORT:]LOCAL_PORT, repeatable: the target's REMOTE_PORT, mirrored or stolen "
    "(feature.network.incoming.mode), to 127.0.0.1:LOCAL_PORT here."
)


def register(app: typer.Typer) -> None:
    app.command("port-forward", context_settings={"help_option_names": ["-h", "--help"]})(
        port_forward
    )


def port_forward(
    port_mapping: Annotated[
        list[str] | None,
        typer.Option("--port-mapping", "--port-mappings", "-L", help=L_HELP),
    ] = None,
    reverse_port_mapping: Annotated[
        list[str] | None, typer.Option("--reverse-port-mapping", "-R", help=R_HELP)
    ] = None,
    target: opt.Target = None,
    namespace: opt.TargetNamespace = None,
    agent_namespace: opt.AgentNamespace = None,
    agent_log_level: opt.AgentLogLevel = None,
    agent_image: opt.AgentImage = None,
    agent_ttl: opt.AgentTtl = None,
    agent_startup_timeout: opt.AgentStartupTimeout = None,
    ephemeral_container: opt.Ephemeral = False,
    accept_invalid_certificates: opt.AcceptInvalidCertificates = None,
    no_telemetry: opt.NoTelemetry = False,
    disable_version_check: opt.DisableVersionCheck = False,
    config_file: opt.ConfigFile = None,
    context: opt.Context = None,
    kubeconfig: opt.Kubeconfig = None,
    agent_address: opt.AgentAddress = None,
    agent_token_file: opt.AgentTokenFile = None,
) -> None:
    """Forward local ports to HOST:RPORT as the target's network reaches them (-L), and the
    target's incoming traffic to local ports (-R)."""
    from mirrord.config import ExecOverrides
    from mirrord.portforward import PortForwardError, parse_all, run_port_forward

    opt.warn_no_effect(
        {
            "--agent-ttl": agent_ttl,
            "--ephemeral-container": ephemeral_container,
            "--no-telemetry": no_telemetry,
            "--disable-version-check": disable_version_check,
        }
    )
    try:
        forwards, reverses = parse_all(port_mapping or [], reverse_port_mapping or [])
    except PortForwardError as e:
        err(str(e))
        raise typer.Exit(e.exit_code) from None
    agent = opt.agent_endpoint(agent_address, agent_token_file)
    overrides = ExecOverrides(
        target=target,
        namespace=namespace,
        agent_namespace=agent_namespace,
        agent_image=agent_image,
        agent_log_level=agent_log_level,
        agent_startup_timeout=agent_startup_timeout,
        accept_invalid_certificates=opt.cert_flag(accept_invalid_certificates),
        kube_context=context,
        kubeconfig=kubeconfig,
    )
    config = load_config(config_file, overrides)
    try:
        code = asyncio.run(run_port_forward(forwards, reverses, config, ORIGINAL_ENV, agent=agent))
    except PortForwardError as e:
        err(str(e))
        raise typer.Exit(e.exit_code) from None
    raise typer.Exit(code)
