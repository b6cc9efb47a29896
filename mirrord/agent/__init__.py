"""The mirrord agent: a gRPC server that acts inside a target process's namespaces.

It must never import mirrord.supervisor or mirrord.cli: it also runs alone in a pod image.
"""

from mirrord.agent.server import AgentServer, parse_listen_address
from mirrord.agent.session import AgentSession, SessionRegistry

__all__ = ["AgentServer", "AgentSession", "SessionRegistry", "parse_listen_address"]
