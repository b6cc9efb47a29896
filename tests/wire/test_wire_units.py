"""Pure parts of the outgoing-traffic additions: the Tcp `data` fast path (netwire), the
DNS answers the proxy builds for dns.filter, and the unix_streams / dns.filter rules."""

from __future__ import annotations

import pytest

from mirrord.features.outgoing.filters import OutgoingRules
from mirrord.v1 import net_pb2
from mirrord.wire import dns as dnswire
from mirrord.wire import net as netwire


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16384, 1 << 20])
def test_data_messages_are_protobufs_bytes(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    wire = netwire.encode_data(netwire.SERVER_DATA_KEY, data)
    assert wire == net_pb2.TcpServerMessage(data=data).SerializeToString()
    assert bytes(netwire.deserialize_server(wire)) == data  # type: ignore[arg-type]
    client = net_pb2.TcpClientMessage(data=data).SerializeToString()
    assert client == netwire.encode_data(netwire.CLIENT_DATA_KEY, data)
    view = netwire.deserialize_client(client)
    assert isinstance(view, memoryview) and bytes(view) == data


def test_other_messages_go_through_protobuf() -> None:
    eof = net_pb2.TcpServerMessage(eof=True).SerializeToString()
    assert netwire.deserialize_server(eof) == net_pb2.TcpServerMessage(eof=True)
    err = net_pb2.TcpServerMessage(error=111).SerializeToString()
    assert netwire.deserialize_server(err) == net_pb2.TcpServerMessage(error=111)
    connect = net_pb2.TcpClientMessage(
        connect=net_pb2.TcpConnect(unix_path="/run/x.sock")
    ).SerializeToString()
    msg = netwire.deserialize_client(connect)
    assert isinstance(msg, net_pb2.TcpClientMessage) and msg.connect.unix_path == "/run/x.sock"
    # A data key whose length does not cover exactly the rest is not taken as data.
    assert netwire.data_payload(netwire.SERVER_DATA_KEY, b"\x1a\x05abc") is None
    assert netwire.serialize_server(net_pb2.TcpServerMessage(eof=True)) == eof


def test_dns_answers() -> None:
    q = dnswire.build_query(0x1234, "Local-Only.internal", dnswire.TYPE_A)
    assert dnswire.question(q) == ("local-only.internal", dnswire.TYPE_A, len(q))
    v4, v6 = bytes([10, 99, 0, 7]), bytes(15) + b"\x01"
    reply = dnswire.build_answer(q, [v4, v6])
    assert dnswire.answer_addresses(reply, 0x1234) == ([v4], False)
    q6 = dnswire.build_query(7, "local-only.internal", dnswire.TYPE_AAAA)
    assert dnswire.answer_addresses(dnswire.build_answer(q6, [v4, v6]), 7) == ([v6], False)
    nx = dnswire.build_answer(q, None, dnswire.RCODE_NXDOMAIN)
    assert dnswire.HEADER.unpack_from(nx)[1] & 0xF == dnswire.RCODE_NXDOMAIN
    assert dnswire.answer_addresses(nx, 0x1234) == ([], False)
    with pytest.raises(dnswire.DnsFormatError):
        dnswire.question(reply)  # an answer is not a query


def test_dns_filter_and_unix_streams_rules() -> None:
    local = OutgoingRules.build(dns_filter_mode="local", dns_filter_entries=["a.example.", "b:53"])
    assert local.dns_local("A.example") and local.dns_local("b")
    assert not local.dns_local("c.example")
    remote = OutgoingRules.build(dns_filter_mode="remote", dns_filter_entries=["a.example"])
    assert not remote.dns_local("a.example") and remote.dns_local("c.example")
    assert not OutgoingRules.build().dns_local("anything")
    unix = OutgoingRules.build(unix_streams=[r"\.sock$", "^/run/app/"])
    assert unix.unix_remote("/tmp/x.sock") and unix.unix_remote("/run/app/ctl")
    assert not unix.unix_remote("/tmp/x.socket")
    with pytest.raises(ValueError, match="unix_streams"):
        OutgoingRules.build(unix_streams=["("])


def test_direct_request_and_reply_round_trip() -> None:
    from mirrord.wire import direct as dw

    for ip in (b"\x0a\x00\x00\x07", bytes(range(16))):
        req = dw.DirectRequest(b"s" * dw.SECRET_SIZE, ip, 8080)
        wire = dw.encode_request(req)
        assert len(wire) == dw.REQUEST_SIZE and dw.decode_request(wire) == req
        reply = dw.DirectReply(0, ip, 40000)
        assert dw.decode_reply(dw.encode_reply(reply)) == reply
    refused = dw.DirectReply(111)
    wire = dw.encode_reply(refused)
    assert len(wire) == dw.REPLY_SIZE and dw.decode_reply(wire) == refused


def test_direct_wire_rejects_what_it_cannot_mean() -> None:
    from mirrord.wire import direct as dw

    good = dw.encode_request(dw.DirectRequest(b"s" * dw.SECRET_SIZE, b"\x01\x02\x03\x04", 1))
    with pytest.raises(dw.DirectWireError, match="not a mirrord direct connection"):
        dw.decode_request(b"HTTP" + good[4:])  # e.g. a browser finding the port
    with pytest.raises(dw.DirectWireError, match="needs an address"):
        dw.decode_request(good[:20] + b"\x00" + good[21:])
    with pytest.raises(dw.DirectWireError, match="unknown address family"):
        dw.decode_request(good[:20] + b"\x05" + good[21:])
    with pytest.raises(dw.DirectWireError, match="39 bytes, not 38"):
        dw.decode_request(good[:-1])
    with pytest.raises(dw.DirectWireError, match="16 bytes, not 3"):
        dw.encode_request(dw.DirectRequest(b"abc", b"\x01\x02\x03\x04", 1))
    with pytest.raises(dw.DirectWireError, match="4 or 16 bytes, not 5"):
        dw.encode_request(dw.DirectRequest(b"s" * 16, b"\x01" * 5, 1))
    with pytest.raises(dw.DirectWireError, match="23 bytes"):
        dw.decode_reply(b"\x00" * 22)


def test_incoming_notes_round_trip() -> None:
    from mirrord.wire import direct as dw

    new = dw.Note(dw.NOTE_NEW, 40001, 8080, peer=(b"\x0a\0\0\x03", 5555), original=(bytes(16), 80))
    gone = dw.Note(dw.NOTE_GONE, 40001)
    failed = dw.Note(dw.NOTE_FAILED, 40002, 8080, errno=111)
    for note in (new, gone, failed):
        wire = dw.encode_note(note)
        assert len(wire) == dw.NOTE_SIZE and dw.decode_note(wire) == note
    with pytest.raises(dw.DirectWireError, match="unknown note kind"):
        dw.decode_note(b"X" + dw.encode_note(gone)[1:])
    with pytest.raises(dw.DirectWireError, match="unknown note kind"):
        dw.encode_note(dw.Note(b"X", 1))
    with pytest.raises(dw.DirectWireError, match="47 bytes, not 46"):
        dw.decode_note(dw.encode_note(gone)[:-1])
