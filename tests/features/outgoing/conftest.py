"""Fixtures of the outgoing-traffic tests (net_world.py)."""

from tests.features.outgoing.net_world import world

__all__ = ["world"]
