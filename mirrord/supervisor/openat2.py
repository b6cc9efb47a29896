"""openat2(2) for the supervisor itself (Python has no binding): a remote file's cached
copy opened with the program's RESOLVE_* flags, relative to our duplicate of its dirfd."""

from __future__ import annotations

import ctypes
import os
import struct

SYS_OPENAT2 = 437
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    how = ctypes.create_string_buffer(struct.pack("<QQQ", flags, mode, resolve), 24)
    ret = int(
        _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_long(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            how,
            ctypes.c_size_t(24),
        )
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ret
