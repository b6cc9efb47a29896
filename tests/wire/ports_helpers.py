"""Scripted source ports and sockets for the SourcePorts tests (wire/source_ports.py)."""

from __future__ import annotations

import random
import socket


class Scripted(random.Random):
    """The ports to try first, in order; random ones after."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports

    def randint(self, a: int, b: int) -> int:
        return self.ports.pop(0) if self.ports else super().randint(a, b)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reusing() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock
