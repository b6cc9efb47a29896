"""Fixtures of the outgoing-traffic tests (net_world.py)."""

from tests.net.net_world import world

__all__ = ["world"]
