"""The forms of `-L` and `-R` (pure), as upstream's `AddrPortMapping` and `PortOnlyMapping`.

- `-L [LPORT:]HOST:RPORT`: LPORT defaults to RPORT; an IPv6 HOST goes in brackets
  (`8080:[fd00::1]:80`, our addition: upstream takes IPv4 or a name).
- `-R [REMOTE_PORT:]LOCAL_PORT`: REMOTE_PORT defaults to LOCAL_PORT.

Ports are 1-65535 (0 is an error, as upstream). Two `-L` with one local port, or two `-R`
with one remote port, are errors too (upstream's "multiple port forwarding mappings").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FORWARD_FORM = "[LPORT:]HOST:RPORT"
REVERSE_FORM = "[REMOTE_PORT:]LOCAL_PORT"


class PortForwardError(Exception):
    """A failure told to the user as it is; `exit_code` is the command's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SpecError(PortForwardError):
    """A bad -L/-R argument: a usage error (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


@dataclass(frozen=True)
class ForwardSpec:
    """-L: 127.0.0.1:local_port here → host:remote_port as the target's network reaches it."""

    local_port: int
    host: str
    remote_port: int


@dataclass(frozen=True)
class ReverseSpec:
    """-R: the target's remote_port → 127.0.0.1:local_port here."""

    remote_port: int
    local_port: int


def _port(text: str, whole: str, flag: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise SpecError(f"{flag} {whole!r}: {text!r} is not a port number")
    port = int(text)
    if port == 0:
        raise SpecError(f"{flag} {whole!r}: port 0 is not allowed")
    if port > 65535:
        raise SpecError(f"{flag} {whole!r}: port {port} is out of range (1-65535)")
    return port


def parse_spec(text: str) -> ForwardSpec:
    """`-L [LPORT:]HOST:RPORT`."""
    bad = SpecError(f"-L {text!r}: expected {FORWARD_FORM}")
    if "[" in text:
        before, _, after = text.partition("[")
        host, closed, tail = after.partition("]")
        if not closed or not tail.startswith(":") or ":" in tail[1:]:
            raise bad
        if before and not before.endswith(":"):
            raise bad
        local = before[:-1] if before else None
        if local is not None and (not local or ":" in local):
            raise bad
        remote = tail[1:]
    else:
        parts = text.split(":")
        if len(parts) == 2:
            local, host, remote = None, parts[0], parts[1]
        elif len(parts) == 3:
            local, host, remote = parts
        else:
            raise bad
    if not host:
        raise bad
    rport = _port(remote, text, "-L")
    lport = _port(local, text, "-L") if local is not None else rport
    return ForwardSpec(lport, host, rport)


def parse_reverse_spec(text: str) -> ReverseSpec:
    """`-R [REMOTE_PORT:]LOCAL_PORT`."""
    parts = text.split(":")
    if len(parts) == 1:
        port = _port(parts[0], text, "-R")
        return ReverseSpec(port, port)
    if len(parts) == 2:
        return ReverseSpec(_port(parts[0], text, "-R"), _port(parts[1], text, "-R"))
    raise SpecError(f"-R {text!r}: expected {REVERSE_FORM}")


def parse_all(
    forwards: Sequence[str], reverses: Sequence[str]
) -> tuple[list[ForwardSpec], list[ReverseSpec]]:
    """Every -L and -R parsed and checked together (SpecError on the first problem)."""
    if not forwards and not reverses:
        raise SpecError(
            "nothing to forward: give at least one -L/--port-mapping "
            f"{FORWARD_FORM} or -R/--reverse-port-mapping {REVERSE_FORM}"
        )
    fwd = [parse_spec(f) for f in forwards]
    rev = [parse_reverse_spec(r) for r in reverses]
    seen: set[int] = set()
    for f in fwd:
        if f.local_port in seen:
            raise SpecError(f"-L: more than one mapping for local port 127.0.0.1:{f.local_port}")
        seen.add(f.local_port)
    seen.clear()
    for r in rev:
        if r.remote_port in seen:
            raise SpecError(f"-R: more than one mapping for the target's port {r.remote_port}")
        seen.add(r.remote_port)
    return fwd, rev
