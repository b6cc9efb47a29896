"""The target's file system for the supervisor (the `Files` gRPC service).

`register` is what mirrord/agent/services.py lists in FEATURE_SERVICES.
"""

from mirrord.agent.files.service import register

__all__ = ["register"]
