"""The network world of the outgoing-traffic tests, for the --explain run against it."""

from tests.features.outgoing.net_world import world

__all__ = ["world"]
