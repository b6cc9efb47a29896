"""Addresses as text to bytes (wire/addresses.py)."""

from __future__ import annotations

import pytest

from mirrord.wire.addresses import packed_ip


@pytest.mark.parametrize(
    "text,packed",
    [
        ("10.1.2.3", bytes([10, 1, 2, 3])),
        ("::1", b"\0" * 15 + b"\x01"),
        ("fe80::1%eth0", bytes([0xFE, 0x80]) + b"\0" * 13 + b"\x01"),
        ("::ffff:10.0.0.1", b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])),
    ],
)
def test_packed_ip(text: str, packed: bytes) -> None:
    assert packed_ip(text) == packed
    assert packed_ip(text) == packed  # from the cache


def test_packed_ip_refuses_what_is_no_address() -> None:
    with pytest.raises(ValueError):
        packed_ip("example.com")
