"""The gRPC services features add to the agent (files, network, …), beside `Agent`.

Each entry registers one service on the server; the registry gives it the live sessions
(`session_of(registry, context)` in service.py finds the caller's).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from mirrord.agent.session import SessionRegistry

Register = Callable[[grpc.aio.Server, SessionRegistry], None]

FEATURE_SERVICES: list[Register] = []
