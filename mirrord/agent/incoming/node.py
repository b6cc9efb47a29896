"""The node's addresses, as the pod sees them: where kubelet's health probes come from.

Probes are sent by kubelet in the node's network namespace, so their source is one of the
node's own addresses (on a bridge CNI, the bridge address, which is also the pod's gateway).
The agent runs on the node: its own netns's local addresses are the node's (a DaemonSet
agent with hostNetwork, or a local agent); the DaemonSet passes the node's address
(status.hostIP, NODE_IP_ENV) and the pod's default gateway covers a bridge CNI, for an
agent that does not share the node's netns. Parsing is pure; readers take the file text.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Mapping

NODE_IP_ENV = "MIRRORD_NODE_IP"  # set by the DaemonSet (kube/manifests.py)

log = logging.getLogger(__name__)

RTF_GATEWAY = 0x2


def local_addresses_from_fib_trie(text: str) -> set[str]:
    """IPv4 addresses marked `/32 host LOCAL` in /proc/net/fib_trie, loopback excluded."""
    found: set[str] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif (
            stripped == "/32 host LOCAL"
            and last is not None
            and not ipaddress.IPv4Address(last).is_loopback
        ):
            found.add(last)
    return found


def node_ip_from_env(environ: Mapping[str, str]) -> set[str]:
    """The node's IPv4 address the DaemonSet passes in NODE_IP_ENV (status.hostIP)."""
    found = set()
    for word in environ.get(NODE_IP_ENV, "").replace(",", " ").split():
        try:
            if ipaddress.ip_address(word).version == 4:
                found.add(word)
        except ValueError:
            log.warning("%s=%r is not an IP address: ignored", NODE_IP_ENV, word)
    return found


def gateways_from_route(text: str) -> set[str]:
    """Gateways of /proc/PID/net/route (hex, host byte order = little-endian on x86)."""
    found: set[str] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        gateway, flags = int(fields[2], 16), int(fields[3], 16)
        if flags & RTF_GATEWAY and gateway:
            found.add(socket.inet_ntoa(struct.pack("<I", gateway)))
    return found


def node_addresses(target_pid: int, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Addresses whose traffic to the pod is the node's own (probes); best effort."""
    found: set[str] = set(node_ip_from_env(environ))
    # thread-self: this thread's netns, i.e. the agent's (the event loop never setns()es).
    for path, parse in (
        ("/proc/thread-self/net/fib_trie", local_addresses_from_fib_trie),
        (f"/proc/{target_pid}/net/route", gateways_from_route),
    ):
        try:
            with open(path) as f:
                found |= parse(f.read())
        except OSError as e:
            log.warning("cannot read %s: %s", path, e)
    return sorted(found, key=ipaddress.IPv4Address)
