"""wire/source_ports.py on loopback: a port held by a TIME_WAIT of ours is bound and
connected again (bind(0) steps over it), a port someone else holds is skipped, and so is
one a live delivery uses."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from mirrord.features.incoming import delivery
from mirrord.features.incoming.config import IncomingSettings
from mirrord.features.incoming.delivery import IncomingProxy
from mirrord.wire.source_ports import CONNECT_TRIES, SourcePorts, another_port
from tests.wire.ports_helpers import Scripted, reusing, unused_port


def test_a_port_held_by_our_time_wait_is_bound_and_connected_again() -> None:
    """What bind(0) cannot do: it steps over every port a TIME_WAIT holds (tens of
    thousands of them under load)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = unused_port()
    first = reusing()
    first.bind(("127.0.0.1", port))
    first.connect(listener.getsockname())
    accepted, _ = listener.accept()
    first.shutdown(socket.SHUT_WR)  # we end first: the TIME_WAIT is on our side
    assert accepted.recv(1) == b""
    accepted.close()
    assert first.recv(1) == b""
    first.close()
    ports = SourcePorts(Scripted([port]))
    again = reusing()
    assert ports.bind(again, "127.0.0.1") == port
    again.connect(listener.getsockname())  # takes the TIME_WAIT over
    assert again.getsockname()[1] == port and ports.live == {port}
    ports.release(port)
    assert ports.live == set()
    again.close()
    listener.close()


def test_a_port_someone_else_binds_is_skipped() -> None:
    other = socket.socket()  # no SO_REUSEADDR: a port nobody may share
    other.bind(("127.0.0.1", 0))
    taken = other.getsockname()[1]
    free = unused_port()
    ports = SourcePorts(Scripted([taken, free]))
    sock = reusing()
    assert ports.bind(sock, "127.0.0.1") == free
    sock.close()
    other.close()


def test_a_live_port_is_skipped() -> None:
    live, free = unused_port(), unused_port()
    ports = SourcePorts(Scripted([live, free]))
    ports.live.add(live)
    sock = reusing()
    assert ports.bind(sock, "127.0.0.1") == free
    assert ports.live == {live, free}
    sock.close()


class _Conn:
    remote = ("10.1.2.3", 40000)
    original_destination = ("10.1.2.4", 80)


async def test_the_clients_delivery_leaves_a_port_whose_connection_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream path's delivery to the program (features/incoming/delivery.py): bound
    to a port whose four-tuple to the program is in use, its connect fails; it goes on
    from another port, and only that one names the delivery."""
    program = socket.create_server(("127.0.0.1", 0))
    port, other = unused_port(), unused_port()
    holder = reusing()
    holder.bind(("127.0.0.1", port))
    holder.connect(program.getsockname())
    monkeypatch.setattr(delivery, "source_ports", SourcePorts(Scripted([port, other])))
    proxy = IncomingProxy(None, IncomingSettings())  # type: ignore[arg-type]
    sock, got = await asyncio.wait_for(
        proxy._connect(_Conn(), socket.AF_INET, program.getsockname()),  # type: ignore[arg-type]
        5,
    )
    assert got == other and sock.getsockname()[1] == other
    assert proxy.delivered(other) == (_Conn.remote, _Conn.original_destination)
    assert proxy.delivered(port) is None
    assert delivery.source_ports.live == {other}
    for s in (sock, holder, program):
        s.close()


def test_only_a_taken_four_tuple_goes_on_from_another_port_while_tries_are_left() -> None:
    taken = OSError(errno.EADDRNOTAVAIL, "taken")
    assert another_port(taken, 0) and another_port(taken, CONNECT_TRIES - 2)
    assert not another_port(taken, CONNECT_TRIES - 1)
    assert not another_port(OSError(errno.ECONNREFUSED, "refused"), 0)
