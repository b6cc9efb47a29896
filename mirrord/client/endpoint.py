"""A running agent given by address (`--agent-address HOST:PORT`) and its token."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class AgentEndpoint:
    address: str
    token: str


def check_agent_address(address: str) -> str | None:
    """What is wrong with an agent address (HOST:PORT, [V6]:PORT), or None: checked before
    the connection attempts, which retry for the whole start-up timeout."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"bad port {port!r}: expected 1-65535"
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}"
    return None


def refuses_kube_target(target: str) -> str:
    """Why --agent-address cannot go with a Kubernetes target (exec and port-forward)."""
    return (
        "--agent-address reaches one agent directly, which takes pid/N targets only; "
        f"{target} is reached through the cluster: drop --agent-address"
    )
