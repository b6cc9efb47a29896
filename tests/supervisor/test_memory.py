"""Writes into a traced thread's memory (supervisor/memory.py), tried on our own."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from mirrord.supervisor.memory import write_mem_pair


def test_a_pair_of_writes_lands_in_order_in_one_call() -> None:
    """A sockaddr and its length, as accept and getsockname answer them."""
    name = ctypes.create_string_buffer(16)
    size = ctypes.create_string_buffer(4)
    write_mem_pair(
        os.getpid(), ctypes.addressof(name), b"sockaddr", ctypes.addressof(size), b"\x08\0\0\0"
    )
    assert name.raw[:8] == b"sockaddr" and size.raw == b"\x08\0\0\0"


def test_a_pair_whose_second_piece_has_nowhere_to_go_is_efault() -> None:
    name = ctypes.create_string_buffer(16)
    with pytest.raises(OSError) as e:
        write_mem_pair(os.getpid(), ctypes.addressof(name), b"x", 8, b"y")  # page 0
    assert e.value.errno == errno.EFAULT


def test_a_pair_too_large_for_one_buffer_is_written_too() -> None:
    big = ctypes.create_string_buffer(2048)
    size = ctypes.create_string_buffer(4)
    write_mem_pair(
        os.getpid(), ctypes.addressof(big), b"a" * 2000, ctypes.addressof(size), b"\xd0\x07\0\0"
    )
    assert big.raw[:2000] == b"a" * 2000 and size.raw == b"\xd0\x07\0\0"
