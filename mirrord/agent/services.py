"""The gRPC services features add to the agent (files, network, …), beside `Agent`.

Each entry registers one service on the server; the registry gives it the live sessions
(`session_of(registry, context)` in service.py finds the caller's).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from mirrord.agent.files import register as register_files
from mirrord.agent.incoming import register as register_incoming
from mirrord.agent.net import register as register_net
from mirrord.agent.session import SessionRegistry

Register = Callable[[grpc.aio.Server, SessionRegistry], None]

FEATURE_SERVICES: list[Register] = [
    register_net,  # outgoing traffic and DNS
    register_files,  # the target's file system
    register_incoming,  # mirror / steal of the target's ports
]
