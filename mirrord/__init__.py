"""mirrord: run a local program in the context of a Kubernetes pod (any binary, via ptrace)."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# grpcio's EventEngine hands every message between its own threads, its poller and the
# asyncio loop; the older I/O path cuts a gRPC round trip between two processes from
# ~245 to ~150-200 µs on this kind of VM, and every relayed connection pays several.
# Set here, before anything imports grpc, in the CLI and the agent alike (the local
# agent inherits it); never over a choice the user made. (A grpcio that drops these
# experiment names only logs a warning.)
_GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
_OWN_ENV: dict[str, str] = {}
if "GRPC_EXPERIMENTS" not in os.environ:
    os.environ["GRPC_EXPERIMENTS"] = _OWN_ENV["GRPC_EXPERIMENTS"] = _GRPC_EXPERIMENTS


# mirrord's own secrets: the token of a running agent (--agent-address) is for us, not
# for the program (which could hand it on, or print it in a log).
_SECRET_ENV = ("MIRRORD_AGENT_TOKEN",)


def user_environ() -> dict[str, str]:
    """The environment the program starts from: the user's, without what mirrord set for
    itself above (a traced program that uses gRPC must not inherit our tuning) and without
    mirrord's secrets."""
    env = dict(os.environ)
    for key, value in _OWN_ENV.items():
        if env.get(key) == value:
            del env[key]
    for key in _SECRET_ENV:
        env.pop(key, None)
    return env
