"""Where HTTP/1.1 messages end, for the filtered steal's fast path (pure: bytes in,
positions out). The fast path forwards each request and response as the bytes that came,
parsing only what routing and framing need; h11 (http1.py) parsed and re-serialised both
sides of every exchange, two thirds of the agent's time per request.

Strict on requests: one that is not plain HTTP/1.1 (another version, Transfer-Encoding,
Expect, Upgrade, conflicting lengths, folded or malformed header lines, a body over
FAST_BODY) is left to h11 at its start, before any of it is sent anywhere. Responses are
taken as they come: a length, chunks, no body (HEAD, 1xx, 204, 304), or everything until
the server closes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
FAST_BODY = 64 * 1024  # larger request bodies stream through h11
_MAX_LINE = 8 * 1024  # a chunk-size or trailer line

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ \x00-\x20\x7f]+) HTTP/1\.(\d)\Z")
_METHOD_SO_FAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,32}( |\Z)")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")


def could_be_request(buf: bytes | bytearray) -> bool:
    """Whether `buf` may be the start of an HTTP/1.x request, so that waiting for the rest
    of its head is right (TLS and anything else: no, at once)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return _METHOD_SO_FAR.match(bytes(buf[:33])) is not None
    return _REQUEST_LINE.match(bytes(buf[:end])) is not None


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as sent (names' case kept), values trimmed
    size: int  # of the head, its blank line included
    body: int  # Content-Length
    close: bool  # Connection: close


def parse_request(head: bytes) -> RequestHead | None:
    """A complete request head (up to and including its blank line), or None when it
    is anything but plain HTTP/1.1 (h11 then takes the connection from there)."""
    if not head.endswith(b"\r\n\r\n") or head.count(b"\n") != head.count(b"\r\n"):
        return None
    lines = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.match(lines[0])
    if m is None or m.group(3) != b"1":
        return None
    headers: list[tuple[str, str]] = []
    lengths: set[bytes] = set()
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.match(name) is None:
            return None  # no colon, a space before it, or a folded line
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            return None
        lower = name.lower()
        if lower in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        if lower == b"content-length":
            if _DIGITS.match(value) is None:
                return None
            lengths.add(value.lstrip(b"0") or b"0")
        elif lower == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    if len(lengths) > 1:
        return None
    body = int(lengths.pop()) if lengths else 0
    if body > FAST_BODY:
        return None
    return RequestHead(
        method=m.group(1).decode("latin-1"),
        target=m.group(2).decode("latin-1"),
        headers=headers,
        size=len(head),
        body=body,
        close=close,
    )


MORE = "more"  # request_at: the start of a plain request, more bytes needed


def request_at(buf: bytes | bytearray) -> RequestHead | str | None:
    """The plain request at the start of `buf` when all of it (head and body) is there;
    MORE when that may still come; None when what is there is not a plain request (h11's
    from its start)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return MORE if len(buf) <= MAX_HEAD and could_be_request(buf) else None
    req = parse_request(bytes(buf[: end + 4]))
    if req is None:
        return None
    return req if len(buf) >= req.size + req.body else MORE


class FramingError(ValueError):
    """A response we cannot tell the end of (the connection is dropped, as h11 did)."""


_HEAD, _FIXED, _SIZE, _DATA, _CRLF, _TRAILERS, _UNTIL_CLOSE = range(7)


class ResponseFramer:
    """One response, as its bytes arrive: `take(buf)` says how many bytes at the start of
    `buf` belong to it (to forward as they are); `done` once it is complete;
    `until_close` when only the server's close ends it."""

    def __init__(self, head_request: bool) -> None:
        self._head_request = head_request
        self._state = _HEAD
        self._left = 0
        self.done = False
        self.keep_alive = True

    @property
    def until_close(self) -> bool:
        return self._state == _UNTIL_CLOSE

    def take(self, buf: bytes | bytearray) -> int:
        pos, n = 0, len(buf)
        while not self.done and pos < n:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        raise FramingError("a response head over 64 KiB")
                    break
                self._head(bytes(buf[pos : end + 4]))
                pos = end + 4
            elif state in (_FIXED, _DATA):
                k = min(self._left, n - pos)
                pos += k
                self._left -= k
                if self._left == 0:
                    if state == _FIXED:
                        self.done = True
                    else:
                        self._state = _CRLF
            elif state == _CRLF:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise FramingError("a chunk not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state in (_SIZE, _TRAILERS):
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > _MAX_LINE:
                        raise FramingError("a chunk-size or trailer line over 8 KiB")
                    break
                line = bytes(buf[pos:end])
                pos = end + 2
                if state == _TRAILERS:
                    self.done = not line  # the blank line ends the trailers
                    continue
                size = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.match(size) is None:
                    raise FramingError(f"a bad chunk size {size[:20]!r}")
                self._left = int(size, 16)
                self._state = _DATA if self._left else _TRAILERS
            else:  # _UNTIL_CLOSE
                pos = n
        return pos

    def _head(self, head: bytes) -> None:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise FramingError(f"a bad status line {lines[0][:40]!r}")
        status = int(parts[1])
        chunked = has_te = False
        lengths: set[bytes] = set()
        close = parts[0] != b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lower = name.strip().lower()
            value = value.strip(b" \t")
            if lower == b"transfer-encoding":
                has_te = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif lower == b"content-length":
                lengths.add(value.lstrip(b"0") or b"0")
            elif lower == b"connection":
                close = close or b"close" in {t.strip().lower() for t in value.split(b",")}
        if 100 <= status < 200 and status != 101:
            return  # an interim response: the real one follows
        self.keep_alive = not close
        if status == 101:
            self._until_close()
        elif self._head_request or status in (204, 304):
            self.done = True
        elif has_te:
            if chunked:
                self._state = _SIZE
            else:
                self._until_close()
        elif lengths:
            if len(lengths) > 1 or _DIGITS.match(next(iter(lengths))) is None:
                raise FramingError("a bad or conflicting Content-Length")
            self._left = int(lengths.pop())
            self._state = _FIXED
            self.done = self._left == 0
        else:
            self._until_close()

    def _until_close(self) -> None:
        self._state = _UNTIL_CLOSE
        self.keep_alive = False
