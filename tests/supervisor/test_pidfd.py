"""Copies of a thread's fds (supervisor/pidfd.py), with the thread pidfds kept open
between copies: a kept one must never reach another thread's fds."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from mirrord.supervisor import pidfd


def _thread_tid(hold: threading.Event) -> tuple[threading.Thread, int]:
    got: list[int] = []
    ready = threading.Event()

    def run() -> None:
        got.append(threading.get_native_id())
        ready.set()
        hold.wait(10)

    t = threading.Thread(target=run)
    t.start()
    assert ready.wait(10)
    return t, got[0]


def test_a_copy_is_the_same_file_again_and_again() -> None:
    with socket.socket() as s:
        inode = os.fstat(s.fileno()).st_ino
        for _ in range(3):  # the second and third through the kept pidfd
            dup = pidfd.take_fd(threading.get_native_id(), s.fileno())
            try:
                assert dup != s.fileno() and os.fstat(dup).st_ino == inode
            finally:
                os.close(dup)
        with pytest.raises(OSError) as e:
            pidfd.take_fd(threading.get_native_id(), 1_000_000)
        assert e.value.errno == errno.EBADF


def test_a_gone_thread_gives_no_copy() -> None:
    """A pidfd kept for a thread that has ended: ESRCH, never some other fd."""
    hold = threading.Event()
    t, tid = _thread_tid(hold)
    with socket.socket() as s:
        os.close(pidfd.take_fd(tid, s.fileno()))  # its pidfd is kept now
        hold.set()
        t.join(10)
        with pytest.raises(OSError) as e:
            pidfd.take_fd(tid, s.fileno())
        assert e.value.errno in (errno.ESRCH, errno.ENOENT)


def test_kept_pidfds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pidfd, "KEPT_PIDFDS", 2)
    kept = pidfd._Pidfds()
    monkeypatch.setattr(pidfd, "_pidfds", kept)
    hold = threading.Event()
    threads = [_thread_tid(hold) for _ in range(4)]
    try:
        with socket.socket() as s:
            for _, tid in threads:
                os.close(pidfd.take_fd(tid, s.fileno()))
            assert len(kept._by_tid) == 2  # the oldest were closed
            assert set(kept._by_tid) == {threads[2][1], threads[3][1]}
    finally:
        hold.set()
        for t, _ in threads:
            t.join(10)
        for fd in kept._by_tid.values():
            os.close(fd)
