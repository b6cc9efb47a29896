"""Outgoing traffic from the target's network namespace (the `Net` gRPC service).

`register` is what mirrord/agent/services.py lists in FEATURE_SERVICES.
"""

from mirrord.agent.net.service import register

__all__ = ["register"]
