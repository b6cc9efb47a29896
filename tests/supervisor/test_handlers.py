"""Syscall handlers against a fake memory (pure: no tracee)."""

import errno
import os
import struct

from mirrord.supervisor.policy import (
    UTS_FIELD,
    Allow,
    Fake,
    Syscall,
    clone3_handler,
    clone_handler,
    make_uname_handler,
    utsname_bytes,
)
from mirrord.supervisor.syscalls import CLONE_THREAD, CLONE_UNTRACED, NR


class FakeMemory:
    def __init__(self, size: int = 4096) -> None:
        self.data = bytearray(size)

    def read(self, addr: int, size: int) -> bytes:
        if addr + size > len(self.data):
            raise OSError(errno.EFAULT, "bad address")
        return bytes(self.data[addr : addr + size])

    def write_pair(self, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
        self.write(addr1, data1)
        self.write(addr2, data2)

    def write(self, addr: int, data: bytes) -> None:
        if addr + len(data) > len(self.data):
            raise OSError(errno.EFAULT, "bad address")
        self.data[addr : addr + len(data)] = data


def sc(nr: str, *args: int) -> Syscall:
    full = (*args, 0, 0, 0, 0, 0, 0)[:6]
    return Syscall(tid=1, nr=NR[nr], args=full)  # type: ignore[arg-type]


def field(buf: bytes, i: int) -> str:
    return buf[i * UTS_FIELD : (i + 1) * UTS_FIELD].split(b"\0")[0].decode()


def test_utsname_layout_replaces_only_the_nodename() -> None:
    raw = utsname_bytes(("Linux", "laptop", "6.1", "#1 SMP", "x86_64", "(none)"), "pod-1")
    assert len(raw) == 6 * UTS_FIELD
    assert [field(raw, i) for i in range(6)] == [
        "Linux",
        "pod-1",
        "6.1",
        "#1 SMP",
        "x86_64",
        "(none)",
    ]


def test_long_hostnames_keep_the_terminating_nul() -> None:
    raw = utsname_bytes(("a",) * 6, "h" * 200)  # type: ignore[arg-type]
    assert field(raw, 1) == "h" * 64
    assert raw[UTS_FIELD * 2 - 1] == 0


def test_uname_is_answered_from_the_supervisor() -> None:
    mem = FakeMemory()
    action = make_uname_handler("checkout-7f9c")(sc("uname", 100), mem)
    assert action == Fake(0)
    written = bytes(mem.data[100 : 100 + 6 * UTS_FIELD])
    assert field(written, 1) == "checkout-7f9c"
    assert field(written, 2) == os.uname().release


def test_uname_with_a_bad_buffer_gets_efault() -> None:
    assert make_uname_handler("x")(sc("uname", 10_000), FakeMemory()) == Fake(-errno.EFAULT)


def test_clone_loses_only_the_untraced_flag() -> None:
    flags = CLONE_THREAD | CLONE_UNTRACED | 0x11
    assert clone_handler(sc("clone", flags), FakeMemory()) == Allow(
        set_args={0: CLONE_THREAD | 0x11}
    )


def test_clone3_flags_are_cleared_in_the_args_struct() -> None:
    mem = FakeMemory()
    mem.write(64, struct.pack("<Q", CLONE_UNTRACED | CLONE_THREAD))
    assert clone3_handler(sc("clone3", 64, 88), mem) == Allow()
    assert struct.unpack("<Q", mem.read(64, 8))[0] == CLONE_THREAD
    # A bad pointer is left for the kernel to refuse.
    assert clone3_handler(sc("clone3", 10_000, 88), mem) == Allow()
