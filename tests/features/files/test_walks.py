"""walks.py on its own (no I/O): what arrives, what is waited for, what goes stale."""

from __future__ import annotations

import asyncio
import stat as statmod

from mirrord.features.files.remote import Listing
from mirrord.features.files.structs import RemoteStat
from mirrord.features.files.walks import Walks

TTL = 2.0
DIR = RemoteStat(mode=statmod.S_IFDIR | 0o755)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def listing(path: str) -> Listing:
    return Listing(path, DIR, lambda: [])


def test_a_listing_is_taken_once_and_only_while_fresh() -> None:
    clock = Clock()
    walks = Walks(clock, TTL)
    walk = walks.begin()
    walks.arrive(walk, [listing("/a"), listing("/b")])
    assert walks.take("/a") is not None
    assert walks.take("/a") is None  # used once
    clock.now += TTL + 0.01
    assert walks.take("/b") is None  # stale


def test_listings_asked_for_before_our_change_are_dropped() -> None:
    walks = Walks(Clock(), TTL)
    walk = walks.begin()
    walks.expect(walk, ["/t/x", "/u"])
    walks.invalidate("/t/x/file")
    walks.arrive(walk, [listing("/t/x"), listing("/u")])
    assert walks.take("/t/x") is None and walks.take("/u") is None
    assert not walks.pending("/t/x")  # no one waits for them either
    later = walks.begin()
    walks.arrive(later, [listing("/u")])
    assert walks.take("/u") is not None


def test_waiting_ends_when_the_listing_comes_or_the_walk_ends() -> None:
    async def main() -> None:
        walks = Walks(Clock(), TTL)
        walk = walks.begin()
        walks.expect(walk, ["/a", "/b"])
        a = asyncio.ensure_future(walks.wait_for("/a", 10))
        b = asyncio.ensure_future(walks.wait_for("/b", 10))
        other = asyncio.ensure_future(walks.wait_for("/c", 10))  # not coming: no wait
        await asyncio.sleep(0)
        assert other.done() and not a.done() and not b.done()
        walks.arrive(walk, [listing("/a")])
        await asyncio.sleep(0.01)
        assert a.done() and a.result() is True and not b.done()
        walks.end(walk)  # /b never came
        await asyncio.sleep(0.01)
        assert b.done() and b.result() is True and walks.take("/b") is None
        late = walks.begin()
        walks.expect(late, ["/slow"])
        assert await walks.wait_for("/slow", 0.01) is False  # still coming: ask alone

    asyncio.run(main())


def test_siblings_only_while_their_parent_is_being_walked() -> None:
    clock = Clock()
    walks = Walks(clock, TTL)
    assert walks.siblings("/p/a") == []  # the parent was never listed
    walks.listed("/p", clock.now, ["/p/a", "/p/b", "/p/c", "/p/d"])
    walks.listed("/p/b", clock.now, [])  # opened moments ago
    walk = walks.begin()
    walks.expect(walk, ["/p/c"])  # coming already
    assert walks.siblings("/p/a") == ["/p/d"]
    clock.now += TTL + 0.01
    assert walks.siblings("/p/a") == []  # the walk of /p is over
