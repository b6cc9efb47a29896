"""The network Feature (outgoing traffic, and incoming when subscribed): its syscall
table over the handlers, and the filter names resolved in the pod."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mirrord.features.incoming.handlers import IncomingHandlers
from mirrord.features.outgoing.filters import OutgoingRules, Route, parse_entry
from mirrord.features.outgoing.handlers import NetHandlers
from mirrord.features.outgoing.redirect import Redirector
from mirrord.features.sockets.sockaddr import Destination
from mirrord.supervisor.policy import Feature, SyscallTable, trapped
from mirrord.supervisor.seccomp import Engine, Rule
from mirrord.supervisor.syscalls import NR

if TYPE_CHECKING:
    from mirrord.explain import Explainer

__all__ = [
    "Destination",
    "IncomingHandlers",
    "OutgoingRules",
    "Redirector",
    "Route",
    "network_feature",
    "parse_entry",
    "resolve_filter_names",
]


async def resolve_filter_names(
    rules: OutgoingRules, resolve_in_pod: Callable[[str], Awaitable[list[bytes]]]
) -> OutgoingRules:
    """Fill in the addresses of the names in the filter: as the pod resolves them, plus as
    this machine does (a `filter.local` name is often a local one, e.g. a dev database)."""
    names: dict[str, frozenset[bytes]] = {}
    loop = asyncio.get_running_loop()
    for name in rules.hostnames():
        found = set(await resolve_in_pod(name))
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        for info in infos:
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]).packed)
        names[name] = frozenset(found)
    return dataclasses.replace(rules, names=names)


def network_feature(
    rules: OutgoingRules,
    redirector: Redirector,
    incoming: IncomingHandlers | None = None,
    *,
    explain: Explainer | None = None,
    close: Callable[[], Awaitable[None]] | None = None,
) -> Feature:
    h = NetHandlers(
        rules,
        redirector,
        incoming_peer=incoming.peer_hook if incoming is not None else None,
        incoming_local=incoming.local_hook if incoming is not None else None,
        explain=explain,
    )
    table: SyscallTable = {
        NR[name]: trapped(NR[name], handler)
        for name, handler in (
            ("connect", h.connect),
            ("getpeername", h.getpeername),
            ("getsockname", h.getsockname),
            ("sendmsg", h.sendmsg),
            ("recvmsg", h.recvmsg),
            ("sendmmsg", h.sendmmsg),
            ("recvmmsg", h.recvmmsg),
        )
    }
    # Only the calls with an address: a sendto/recvfrom on a connected socket costs nothing.
    table[NR["sendto"]] = trapped(NR["sendto"], h.sendto, Rule(NR["sendto"], arg_nonzero=4))
    table[NR["recvfrom"]] = trapped(NR["recvfrom"], h.recvfrom, Rule(NR["recvfrom"], arg_nonzero=4))
    if incoming is not None:
        # Incoming traffic (features/incoming/handlers.py): one feature, since it shares
        # getpeername/getsockname with outgoing traffic.
        table[NR["bind"]] = trapped(NR["bind"], incoming.bind)
        table[NR["listen"]] = trapped(NR["listen"], incoming.listen)
        for name in ("accept", "accept4"):
            # ptrace: only when the peer address is asked for (it is rewritten at the exit
            # stop). notify: every accept, since the supervisor performs those on its
            # listeners: no accept of the program's can then race ours.
            table[NR[name]] = trapped(
                NR[name],
                incoming.accept,
                Rule(NR[name], arg_nonzero=1, engine=Engine.PTRACE),
                Rule(NR[name], engine=Engine.NOTIFY),
            )
    return Feature("network", table, close=close)
