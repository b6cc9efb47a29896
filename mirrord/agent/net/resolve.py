"""Resolve a name the way a program in the pod would, for filters and port-forward.

The pod's /etc/hosts first, then its nameservers (from its /etc/resolv.conf, with its
`search` list and `ndots`), over UDP from the pod's network namespace. Files are read
through /proc/PID/root (the agent does not enter the mount namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field

from mirrord.agent.net.sockets import pod_socket
from mirrord.agent.session import AgentSession
from mirrord.wire.dns import TYPE_A, TYPE_AAAA, DnsFormatError, answer_addresses, build_query

QUERY_TIMEOUT_S = 2.0


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    ndots: int = 1


def parse_resolv_conf(text: str) -> ResolvConf:
    conf = ResolvConf()
    for line in text.splitlines():
        parts = line.split("#")[0].split(";")[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            conf.nameservers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            conf.search = parts[1:]
        elif parts[0] == "options":
            for opt in parts[1:]:
                if opt.startswith("ndots:"):
                    with contextlib.suppress(ValueError):
                        conf.ndots = int(opt[6:])
    return conf


def hosts_lookup(text: str, name: str) -> list[bytes]:
    name = name.lower().rstrip(".")
    out: list[bytes] = []
    for line in text.splitlines():
        parts = line.split("#")[0].split()
        if len(parts) >= 2 and name in (p.lower() for p in parts[1:]):
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_address(parts[0]).packed)
    return out


def candidates(name: str, conf: ResolvConf) -> list[str]:
    if name.endswith("."):
        return [name.rstrip(".")]
    suffixed = [f"{name}.{d}" for d in conf.search]
    return [name, *suffixed] if name.count(".") >= conf.ndots else [*suffixed, name]


def _read(root: str, path: str) -> str:
    try:
        with open(root + path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


async def resolve(session: AgentSession, name: str) -> list[bytes]:
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(name).packed]
    root = f"/proc/{session.pid}/root" if session.pid is not None else ""
    found = hosts_lookup(_read(root, "/etc/hosts"), name)
    if found:
        return found
    conf = parse_resolv_conf(_read(root, "/etc/resolv.conf"))
    for candidate in candidates(name, conf):
        for server in conf.nameservers or ["127.0.0.1"]:
            addrs = await _query_server(session, server, candidate)
            if addrs is not None:
                if addrs:
                    return addrs
                break  # the server answered: no such name here, try the next candidate
    return []


async def _query_server(session: AgentSession, server: str, name: str) -> list[bytes] | None:
    """Addresses (A then AAAA) from one server; None if it did not answer."""
    try:
        ip = ipaddress.ip_address(server)
    except ValueError:
        return None
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    sock = await pod_socket(session, family, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    out: list[bytes] = []
    try:
        await loop.sock_connect(sock, (str(ip), 53))
        for qtype in (TYPE_A, TYPE_AAAA):
            qid = secrets.randbelow(65536)
            await loop.sock_sendall(sock, build_query(qid, name, qtype))
            try:
                async with asyncio.timeout(QUERY_TIMEOUT_S):
                    while True:
                        reply = await loop.sock_recv(sock, 65536)
                        with contextlib.suppress(DnsFormatError):
                            addrs, _tc = answer_addresses(reply, qid)
                            out += addrs
                            break
            except (TimeoutError, OSError):
                return out or None
    except OSError:
        return None
    finally:
        sock.close()
    return out
