"""The filtered steal's fast path (agent/incoming/http1_framing.py), without I/O: which
requests it takes, and where responses end, fed in every split."""

from __future__ import annotations

import pytest

from mirrord.agent.incoming.http1_framing import (
    FAST_BODY,
    MAX_HEAD,
    MORE,
    FramingError,
    ResponseFramer,
    could_be_request,
    parse_request,
    request_at,
)

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: pod\r\nX-User:  me \r\n\r\n"


def test_a_plain_request_is_parsed() -> None:
    req = parse_request(GET)
    assert req is not None
    assert (req.method, req.target, req.size, req.body, req.close) == (
        "GET",
        "/a?b=1",
        len(GET),
        0,
        False,
    )
    assert req.headers == [("Host", "pod"), ("X-User", "me")]
    post = b"POST / HTTP/1.1\r\nContent-Length: 005\r\nConnection: keep-alive, Close\r\n\r\n"
    req = parse_request(post)
    assert req is not None and req.body == 5 and req.close


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0\r\n\r\n",  # another version
        b"PRI * HTTP/2.0\r\n\r\n",  # the HTTP/2 preface
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",  # a space before the colon
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",  # a bare LF
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (FAST_BODY + 1),
    ],
)
def test_anything_unusual_is_left_to_h11(head: bytes) -> None:
    assert parse_request(head) is None


def test_what_may_be_a_request_is_waited_for_and_the_rest_is_not() -> None:
    for start in (b"", b"GE", b"GET ", b"GET /x HT", b"PRI * HTTP/2.0", GET[:20]):
        assert could_be_request(start)
    for start in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/2.0\r\n", b"SSH-2.0-x\r\n", b"\r\n"):
        assert not could_be_request(start)


def test_a_request_is_taken_once_all_of_it_is_there() -> None:
    post = b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    for i in range(len(post)):
        assert request_at(post[:i]) == MORE  # its head, then its body, still coming
    req = request_at(post + GET)  # what follows it is the next one's
    assert req == parse_request(post[:-4]) and req != MORE


def test_what_cannot_be_a_plain_request_is_h11s_at_once() -> None:
    assert request_at(b"\x16\x03\x01\x02\x00") is None  # TLS: not waited for
    assert request_at(b"GET / HTTP/1.0\r\n\r\n") is None  # complete, not plain
    assert request_at(b"GET / HTTP/1.1\r\nX: " + b"x" * MAX_HEAD) is None  # a head too long


def feed(framer: ResponseFramer, data: bytes, step: int) -> tuple[int, bytes]:
    """Feed `data` `step` bytes at a time, as the side's reads would; (bytes taken, the
    rest left after the response)."""
    buf = bytearray()
    taken = 0
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        n = framer.take(buf)
        taken += n
        del buf[:n]
        if framer.done:
            return taken, bytes(buf) + data[i + step :]
    return taken, bytes(buf)


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(
    ("response", "head_request", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", False, False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True, True),  # HEAD: no body
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False, True),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            False,
            True,
        ),
        (CHUNKED, False, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False, True),
    ],
)
def test_a_response_ends_where_its_framing_says(
    response: bytes, head_request: bool, keep_alive: bool, step: int
) -> None:
    framer = ResponseFramer(head_request)
    taken, rest = feed(framer, response + b"NEXT", step)
    assert framer.done and (taken, rest) == (len(response), b"NEXT")
    assert framer.keep_alive is keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length: until the server closes
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    ],
)
def test_a_response_without_an_end_lasts_until_the_close(head: bytes) -> None:
    framer = ResponseFramer(False)
    taken, rest = feed(framer, head + b"all of this", 4)
    assert not framer.done and framer.until_close and not framer.keep_alive
    assert (taken, rest) == (len(head) + 11, b"")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"SSH-2.0\r\n\r\n",
    ],
)
def test_a_response_we_cannot_frame_is_an_error(response: bytes) -> None:
    with pytest.raises(FramingError):
        feed(ResponseFramer(False), response, 1000)
