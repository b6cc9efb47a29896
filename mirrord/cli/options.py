"""The options `exec` and `port-forward` share (upstream's TargetParams and AgentParams,
plus ours), and what both do with them: the no-effect warnings, `-c`'s value, the agent
address and its token."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from mirrord.cli.argv import parse_bool
from mirrord.cli.common import err

if TYPE_CHECKING:  # mirrord.client imports grpc: not for `mirrord --help`
    from mirrord.client.endpoint import AgentEndpoint

# No square brackets: typer renders help as rich markup.
TARGET_HELP = (
    "pod/NAME, pod/NAME/container/C, deployment/NAME, statefulset/…, rollout/…, job/…, "
    "cronjob/…, service/…, replicaset/…, pid/N (a local process), or targetless. Without "
    "a target: targetless in the cluster of the current kube context (outgoing traffic and "
    "DNS leave from the cluster), or on this machine when there is no kubeconfig."
)
NO_EFFECT = "Accepted; no effect here."

Target = Annotated[str | None, typer.Option("--target", "-t", help=TARGET_HELP)]
TargetNamespace = Annotated[
    str | None, typer.Option("--target-namespace", "-n", help="Target's namespace.")
]
AgentNamespace = Annotated[
    str | None, typer.Option("--agent-namespace", "-a", help="Namespace of the agent.")
]
AgentLogLevel = Annotated[
    str | None, typer.Option("--agent-log-level", "-l", help="The agent's log level.")
]
AgentImage = Annotated[
    str | None, typer.Option("--agent-image", "-i", help="The agent's container image.")
]
AgentTtl = Annotated[int | None, typer.Option("--agent-ttl", help=NO_EFFECT)]
AgentStartupTimeout = Annotated[
    int | None, typer.Option("--agent-startup-timeout", help="Seconds to wait for the agent.")
]
Ephemeral = Annotated[bool, typer.Option("--ephemeral-container", "-e", help=NO_EFFECT)]
AcceptInvalidCertificates = Annotated[
    str | None,
    typer.Option(
        "--accept-invalid-certificates",
        "-c",
        help="Do not verify the API server's certificate (-c, or -c=false).",
    ),
]
NoTelemetry = Annotated[
    bool, typer.Option("--no-telemetry", help="Accepted; no telemetry is ever sent.")
]
DisableVersionCheck = Annotated[bool, typer.Option("--disable-version-check", help=NO_EFFECT)]
ConfigFile = Annotated[
    str | None,
    typer.Option(
        "--config-file", "-f", help="mirrord.json / .yaml / .toml (alone: ./.mirrord/mirrord.json)."
    ),
]
Context = Annotated[str | None, typer.Option("--context", help="Kube context.")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file.")]
AgentAddress = Annotated[
    str | None,
    typer.Option(
        "--agent-address",
        help="HOST:PORT of a running agent (token from MIRRORD_AGENT_TOKEN or "
        "--agent-token-file) instead of starting a local one.",
    ),
]
AgentTokenFile = Annotated[
    str | None, typer.Option("--agent-token-file", help="File holding the agent token.")
]

# Upstream flags that mean nothing here: accepted, and said so once each.
NO_EFFECT_FLAGS: dict[str, str] = {
    "--agent-ttl": "the agent is a DaemonSet (or a local process) that outlives sessions",
    "--ephemeral-container": "the agent runs as a DaemonSet, not in an ephemeral container",
    "--skip-processes": "every process of the program runs under the supervisor",
    "--no-telemetry": "no telemetry is ever sent",
    "--disable-version-check": "there is no version check to disable",
    "--key": "sessions are not managed by an operator",
}


def warn_no_effect(flags: dict[str, object]) -> None:
    for flag, value in flags.items():
        if value not in (None, False):
            err(f"warning: {flag} has no effect here ({NO_EFFECT_FLAGS[flag]}); ignored")


def cert_flag(value: str | None) -> bool | None:
    """-c/--accept-invalid-certificates[=BOOL] (argv.py made `-c` alone `=true`)."""
    if value is None:
        return None
    parsed = parse_bool(value)
    if parsed is None:
        err(f"--accept-invalid-certificates: expected true or false, got {value!r}")
        raise typer.Exit(2)
    return parsed


def agent_endpoint(address: str | None, token_file: str | None) -> AgentEndpoint | None:
    """--agent-address checked (HOST:PORT that resolves) with its token; exit 2 if not."""
    from mirrord.client.endpoint import AgentEndpoint, check_agent_address

    if address is None:
        return None
    problem = check_agent_address(address)
    if problem is not None:
        err(f"--agent-address {address}: {problem}")
        raise typer.Exit(2)
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
            "--agent-address needs the agent's token: set MIRRORD_AGENT_TOKEN or pass "
            "--agent-token-file"
        )
        raise typer.Exit(2)
    return AgentEndpoint(address, token)
