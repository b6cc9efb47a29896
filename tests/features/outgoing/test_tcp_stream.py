"""The `Net.Tcp` stream between the real proxy code and the real agent (in-process): reuse
with and without pipelining (old clients still get `done`), `then_eof`, and a new stream
when an idle one turns out to be over."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.agent.net.tcp import Reply, Request, _Outcome, _relay_connected
from mirrord.features.outgoing.relay import new_call, open_stream
from mirrord.v1 import net_pb2
from mirrord.wire.net import CLIENT_DATA_KEY, SERVER_DATA_KEY, deserialize_server, encode_data
from tests.features.outgoing.net_world import World, inprocess_agent

GET = b"GET / HTTP/1.0\r\n\r\n"


def _connect(ip: bytes, port: int, *, pipelined: bool) -> net_pb2.TcpClientMessage:
    return net_pb2.TcpClientMessage(
        connect=net_pb2.TcpConnect(
            remote=net_pb2.SocketAddress(ip=ip, port=port),
            reuse=True,
            pipelined=pipelined,
            data_eof=pipelined,
        )
    )


async def test_reuse_with_and_without_pipelining(world: World) -> None:
    async with inprocess_agent(world) as (client, method, svc):
        for pipelined in (False, True):
            call = new_call(method, client.metadata())
            for _ in range(3):  # the same stream, one connection after the other
                await call.write(_connect(svc, 8080, pipelined=pipelined))
                first = await call.read()
                assert isinstance(first, net_pb2.TcpServerMessage)
                assert first.WhichOneof("msg") == "connected"  # never a stray `done`
                await call.write(encode_data(CLIENT_DATA_KEY, GET))
                await call.write(net_pb2.TcpClientMessage(eof=True))
                body, kinds = b"", []
                while True:
                    msg = await call.read()
                    if isinstance(msg, memoryview):
                        body += msg
                        kinds.append("data")
                        continue
                    assert isinstance(msg, net_pb2.TcpServerMessage)
                    kind = msg.WhichOneof("msg")
                    kinds.append(kind)
                    body += msg.data
                    if kind == "done" or (pipelined and (kind == "eof" or msg.then_eof)):
                        break
                    assert not msg.then_eof  # only for a client that set data_eof
                assert body.endswith(b"service")
                if pipelined:
                    assert "done" not in kinds
                else:
                    assert kinds[-2:] == ["eof", "done"]
            call.cancel()


async def test_an_idle_stream_the_agent_ended_is_replaced(world: World) -> None:
    async with inprocess_agent(world) as (client, method, svc):
        ended = new_call(method, client.metadata())
        await ended.write(_connect(svc, 9, pipelined=True))  # refused: the stream ends
        answer = await ended.read()
        assert isinstance(answer, net_pb2.TcpServerMessage) and answer.error > 0
        assert await ended.read() is EOF
        call, connected = await open_stream(
            method, client.metadata(), svc, 8080, call=ended, reuse=True
        )
        assert call is not ended
        assert connected.local.port > 0
        call.cancel()


async def _eof_only() -> AsyncIterator[Request]:
    yield net_pb2.TcpClientMessage(eof=True)


async def _relayed(data_eof: bool) -> tuple[list[Reply], bool]:
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(b"hello")
        theirs.shutdown(socket.SHUT_WR)  # bytes and end both wait before the first read
        ours.setblocking(False)
        outcome = _Outcome()
        replies = [r async for r in _relay_connected(ours, _eof_only(), outcome, data_eof)]
        assert theirs.recv(10) == b""  # the client's eof became a shutdown
    return replies, outcome.clean


async def test_then_eof_spares_the_eof_message() -> None:
    replies, clean = await _relayed(data_eof=True)
    assert clean
    assert isinstance(replies[0], net_pb2.TcpServerMessage) and replies[0].HasField("connected")
    assert len(replies) == 2 and isinstance(replies[1], bytes)
    last = deserialize_server(replies[1])
    assert last == net_pb2.TcpServerMessage(data=b"hello", then_eof=True)

    # A client that did not ask for it gets the data and a separate eof, as before.
    replies, clean = await _relayed(data_eof=False)
    assert clean
    assert replies[1] == encode_data(SERVER_DATA_KEY, b"hello")
    assert replies[2] == net_pb2.TcpServerMessage(eof=True)
