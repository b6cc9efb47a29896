"""Incoming traffic: redirect a target's ports to the agent (iptables REDIRECT in the
target's netns) and steal or mirror the connections to the client. See docs/architecture.md."""

from mirrord.agent.incoming.service import register

__all__ = ["register"]
