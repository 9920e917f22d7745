"""Large directories: readdir streams the listing, a walk makes no HEAD per entry, and what the
mount keeps per entry is bounded (unit tests on the fake store, then a real mount on SeaweedFS)."""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import os
import posixpath
import re
import stat
import struct
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import s3rig
from fakestore import FakeStore
from test_fs_unit import _context, make_ops  # noqa: F401 - _context: an autouse fixture
from waiting import eventually

from s3fs_mount.fs.attrs import Attributes
from s3fs_mount.fs.expiring import ExpiringLRU, ttl_cache
from s3fs_mount.fs.fuselib import (
    FUSE,
    FUSE_READDIR_PLUS,
    LIBFUSE_MAJOR,
    NOTIFY_BATCH,
    DirStream,
    EntryNotifier,
    FuseOSError,
    KernelNames,
    set_stat,
)
from s3fs_mount.fs.listahead import BEGUN, ListAhead
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions, OptionError
from s3fs_mount.fs.paths import KeyMap
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.xmlparse import ListPage


def big_store(count: int, prefix: str = "big/", store: FakeStore | None = None) -> FakeStore:
    store = store if store is not None else FakeStore()
    for i in range(count):
        store.put("%sf%06d" % (prefix, i), b"x" * (i % 7))
    return store


def test_a_walk_of_a_large_directory_keeps_the_cache_bounded_and_sends_no_head(tmp_path):
    store = big_store(50_000)
    ops = make_ops(tmp_path, store, attr_cache=1000, listing_attrs=True)
    entries = ops.readdir("/big", 1)  # the directory's own lookup happens here
    heads = store.calls["HEAD"]
    listed = [e for e in entries if not isinstance(e, str)]
    assert len(listed) == 50_000
    assert len(ops.namespace._attrs) <= 1000 and len(ops.namespace._full) <= 1000
    assert "/big" not in ops.namespace._listings  # 50,000 names are not kept
    lists = store.calls["LIST"]
    for name, attrs, _ in listed:  # ls -l, du: a stat of each entry after the listing
        st = ops.getattr("/big/" + name)
        assert st["st_size"] == attrs["st_size"] == int(name[1:]) % 7
        assert len(ops.namespace._attrs) <= 1000
    assert store.calls["HEAD"] == heads  # no HEAD per entry: the walk lists a page at a time
    assert store.calls["LIST"] - lists <= 60  # ~one page per 1,000 entries (the listing took 50)


class StoppedClock:
    """A clock that does not move: what a test caches stays (however slow the machine)."""

    def time(self) -> float:
        return 1_700_000_000.0

    def monotonic(self) -> float:
        return 1000.0


def test_a_walk_that_stats_each_batch_it_read_lists_a_window_again_only_where_the_cache_ran_out(tmp_path):
    # du and find -size (gnulib fts) read a batch of names, then stat each in the order read.
    batch, count = 5000, 20_000
    store = big_store(count)
    opts = MountOptions(cache_dir=str(tmp_path / "cache"), attr_cache=batch, listing_attrs=True)
    ops = S3Operations(Bucket(store, "bucket"), "", opts, clock=StoppedClock())  # nothing expires meanwhile
    ops.namespace.configure_directories()
    windows: list[str] = []  # the LISTs from a name on: lookups' (the readdir's go by continuation)
    whole_list = store.list

    def listing(prefix="", delimiter="/", bucket=None, max_keys=1000, start_after=None):
        if start_after is not None:
            windows.append(start_after)
        return whole_list(prefix, delimiter, bucket, max_keys, start_after)

    store.list = listing
    entries = ops.readdir("/big", 1)
    listed = [e for e in itertools.islice(entries, 2) if isinstance(e, str)]
    heads = store.calls["HEAD"]
    for _ in range(count // batch):
        for name in [e[0] for e in itertools.islice(entries, batch)]:
            assert ops.getattr("/big/" + name)["st_size"] == int(name[1:]) % 7
    assert listed == [".", ".."] and store.calls["HEAD"] == heads
    # The batch's first names, pushed out by the listing reading on, are listed again (a window
    # of 1,000 a LIST), no more: each window pushes out names already asked, not the next window.
    assert len(windows) <= 2 * (count // batch), windows


def test_a_file_and_a_directory_of_one_name_show_once_across_pages(tmp_path):
    store = FakeStore()
    store.put("a", b"file")  # listed first; a/ comes 1,500 keys later, on another page
    for i in range(1500):
        store.put("a.%04d" % i, b"")
    store.put("a/inner", b"")
    store.put("b_$folder$", b"")  # a holder and a prefix: one directory
    store.put("b/inner", b"")
    store.put("c", b"file only")
    ops = make_ops(tmp_path, store)
    entries = [e for e in ops.readdir("/", 1) if not isinstance(e, str)]
    names = [e[0] for e in entries]
    assert sorted(names) == sorted(["a", "b", "c"] + ["a.%04d" % i for i in range(1500)])
    kinds = {e[0]: e[1] for e in entries if e[0] in ("a", "b", "c")}
    # Directories: the kernel is told the type and asks their holder the rest; a file of 9
    # bytes may be a link: it asks that too.
    assert kinds == {"a": {"st_mode": stat.S_IFDIR}, "b": {"st_mode": stat.S_IFDIR}, "c": None}
    assert ops.getattr("/c")["st_size"] == 9


class PagedStore(FakeStore):
    """A fake store whose listings of ``big/`` say when each page after the first is asked for,
    fail at page ``fail_page`` (S3Error 503), and say when a listing generator is closed."""

    def __init__(self, fail_page: int | None = None) -> None:
        super().__init__()
        self.asked = [threading.Event() for _ in range(10)]  # [n]: page n (0-based) was asked for
        self.closed = threading.Event()
        self.fail_page = fail_page

    def list(self, prefix="", delimiter="/", bucket=None, max_keys=1000, start_after=None):
        if prefix != "big/":
            yield from super().list(prefix, delimiter, bucket, max_keys, start_after)
            return
        pages = super().list(prefix, delimiter, bucket, max_keys, start_after)
        try:
            for number in range(10):
                self.asked[number].set()
                if number == self.fail_page:
                    raise S3Error(503, "SlowDown")
                page = next(pages, None)
                if page is None:
                    return
                yield page
        finally:
            self.closed.set()


def paged_store(count: int, fail_page: int | None = None) -> PagedStore:
    store = PagedStore(fail_page)
    big_store(count, store=store)
    return store


def test_readdir_hands_out_entries_before_the_last_page_and_fetches_one_page_ahead(tmp_path):
    store = paged_store(2500)
    ops = make_ops(tmp_path, store)
    entries = ops.readdir("/big", 1)  # the directory's own lookup happens here
    before = store.calls["LIST"]
    first = [next(entries) for _ in range(5)]  # the first page's: nothing asked of the rest yet
    assert first[:2] == [".", ".."] and first[2][0] == "f000000"
    assert store.asked[1].wait(30)  # the second page is on its way while the first is handed out
    assert not store.asked[2].is_set()  # one page ahead, no more
    rest = list(entries)
    assert [e[0] for e in first[2:] + rest] == ["f%06d" % i for i in range(2500)]  # in order, once each
    assert store.calls["LIST"] - before == 3 and store.closed.wait(30)


def test_a_readdir_that_stops_early_leaves_no_listing_open(tmp_path):
    store = paged_store(3500)
    ops = make_ops(tmp_path, store)
    entries = ops.readdir("/big", 1)
    [next(entries) for _ in range(5)]
    assert store.asked[1].wait(30)
    entries.close()  # releasedir after part of the directory (ls | head)
    assert store.closed.wait(30)  # the page fetched ahead is dropped and the listing closed
    assert not store.asked[2].is_set()
    assert len([e for e in ops.readdir("/big", 2) if not isinstance(e, str)]) == 3500


def test_a_page_fetched_ahead_that_fails_is_an_error_after_the_entries_before_it(tmp_path):
    store = paged_store(2500, fail_page=1)
    ops = make_ops(tmp_path, store)
    got = []
    with pytest.raises(FuseOSError) as raised:
        for entry in ops.readdir("/big", 1):
            got.append(entry)
    assert raised.value.errno == errno.EIO  # SlowDown, after the retry policy: not the end
    # the first page's, but its last (which waits for the next page: a directory of its name?)
    assert [e[0] for e in got[2:]] == ["f%06d" % i for i in range(999)]


def test_list_ahead_with_no_thread_free_fetches_in_the_reader():
    pages = [ListPage(entries=[], truncated=True, continuation="x") for _ in range(3)]
    pages[-1].truncated = False
    ahead = ListAhead(workers=0)
    assert list(ahead.pages(iter(pages))) == pages
    ahead = ListAhead(workers=1)
    ahead.close()  # the mount is going away: readers fetch their own pages
    assert list(ahead.pages(iter(pages))) == pages


def _listing(tag: str, closed: list[str], pages: int = 2, opened: list[str] | None = None):
    """A listing of ``pages`` pages (one prefix each) that records its close in ``closed`` (once
    asked for its first page: one never begun has sent nothing, and has nothing to close)."""
    if opened is not None:
        opened.append(tag)
    try:
        for i in range(pages):
            more = i < pages - 1
            page = ListPage(entries=[], prefixes=["%s%d/" % (tag, i)], truncated=more)
            page.continuation = "c" if more else None
            yield page
    finally:
        closed.append(tag)


def test_a_listing_begun_ahead_is_resumed_by_its_reader_whole_and_closed():
    closed: list[str] = []
    ahead = ListAhead(workers=2)
    assert ahead.begin("/a", _listing("a", closed), asked=10.0)
    assert not ahead.begin("/a", _listing("again", closed), asked=11.0)  # one at a time a directory
    asked, pages = ahead.resume("/a", since=5.0)
    assert asked == 10.0
    assert [p.prefixes for p in ahead.pages(pages)] == [["a0/"], ["a1/"]]
    assert closed == ["a"]
    assert ahead.resume("/a", since=5.0) is None  # taken: a reader lists anew
    ahead.close()


def test_a_listing_begun_ahead_and_not_taken_in_time_is_closed():
    closed: list[str] = []
    opened: list[str] = []
    ahead = ListAhead(workers=1)
    assert ahead.begin("/old", _listing("old", closed, opened=opened), asked=10.0)
    assert ahead.resume("/old", since=10.5) is None  # begun before the reader's freshness bound
    eventually(lambda: closed == ["old"], what="the dropped listing closed")
    assert ahead.begin("/d", _listing("d", closed, opened=opened), asked=20.0)
    eventually(lambda: ahead.begin("/d/e", _listing("e", closed, opened=opened), asked=20.0), what="a thread")
    ahead.drop("/d", tree=True)  # rmdir, rename: what was begun there is gone
    eventually(lambda: "d" in closed and sorted(closed) == sorted(opened), what="the dropped listings closed")
    assert ahead.resume("/d", since=0) is None and ahead.resume("/d/e", since=0) is None
    ahead.close()


def test_listings_begun_ahead_are_bounded_and_the_oldest_pushed_out_closed():
    closed: list[str] = []
    ahead = ListAhead(workers=1)

    def begin(i: int) -> bool:
        return ahead.begin("/d%d" % i, _listing("d%d" % i, closed, pages=1), asked=i)

    for i in range(BEGUN + 2):
        eventually(functools.partial(begin, i), what="a free thread")  # each fetched before the next
    eventually(lambda: sorted(closed) == ["d0", "d1"], what="the two oldest closed")
    assert ahead.resume("/d0", since=0) is None
    asked, pages = ahead.resume("/d%d" % (BEGUN + 1), since=0)
    assert [p.prefixes for p in pages] == [["d%d0/" % (BEGUN + 1)]]
    ahead.close()
    eventually(lambda: len(closed) == BEGUN + 2, what="close() closing the rest")


def test_the_attribute_cache_expires_each_entry_at_its_time_and_keeps_the_latest_used():
    clock = Clock()
    cache = ExpiringLRU(3, lambda key, ttl, now: now + ttl, clock)
    cache["a"], cache["b"], cache["c"] = 10, 1, 10
    cache["skipped"] = 0  # expired already: not kept
    assert "skipped" not in cache and len(cache) == 3
    clock.now += 2
    assert cache.get("b") is None and "b" not in cache  # its own time came
    assert cache.get("a") == 10 and cache["c"] == 10
    cache["d"] = 10
    cache["e"] = 10  # over 3: the least recently used goes (a, then c were used after their set)
    assert sorted(cache.keys()) == ["c", "d", "e"] and len(cache) == 3
    assert cache.pop("d") == 10 and cache.pop("d", None) is None
    with pytest.raises(KeyError):
        cache["a"]
    clock.now += 20
    assert cache.pop("c", "gone") == "gone" and cache.get("e", -1) == -1


def test_the_namespaces_recent_change_caches_keep_each_entry_for_their_ttl_by_the_clock():
    # What replaced cachetools' TTLCache for _changed, _removed, _missing, _listings (round 37):
    # an entry lasts ttl from its (last) set, by the injected clock; the least recently used goes
    # past maxsize; an expired entry is absent for get, pop and in.
    clock = Clock()
    cache = ttl_cache(2, 5.0, clock)
    cache["a"] = 1.0
    clock.now += 3
    cache["b"] = 2.0
    assert cache.get("a") == 1.0 and "b" in cache and len(cache) == 2
    clock.now += 2.5  # a: 5.5 s since set; b: 2.5
    assert cache.get("a", 0.0) == 0.0 and "a" not in cache and cache.get("b") == 2.0
    cache["b"] = 3.0  # set again: its 5 s from now
    clock.now += 4
    assert cache.pop("b") == 3.0 and cache.pop("b", None) is None
    cache["c"], cache["d"] = 1.0, 1.0
    cache.get("c")
    cache["e"] = 1.0  # over 2: d (the least recently used) goes
    assert sorted(cache.keys()) == ["c", "e"]
    clock.now += 5
    assert not any(k in cache for k in "cde") and cache.get("c") is None


def test_trim_drops_the_expired_least_recently_used_entries_only():
    """A cache set far more often than read (the sizes an ls -l tells the kernel) stays near
    its live entries: trim drops expired ones from the old end, stopping at a live one."""
    clock = Clock()
    cache = ttl_cache(100, 2.0, clock)
    for n in range(50):
        cache["old%d" % n] = n
    clock.now += 3
    cache["live"] = 1
    cache.trim(most=30)
    assert len(cache) == 21 and "live" in cache
    cache.trim(most=100)
    assert cache.keys() == ["live"]
    cache.trim()  # a live entry stops it
    assert cache.keys() == ["live"]


def test_set_stat_fills_as_mfusepy_does():
    import mfusepy

    a = Attributes(mode=0o100640, size=12345, mtime=1_700_000_000.123456, uid=7, gid=8, atime=1.5e9, nlink=3)
    for attrs, use_ns in ((dict(a.stat(), st_birthtime=5, st_unknown=1), True), ({"st_mtime": 2.25}, False)):
        theirs, ours = mfusepy.c_stat(), mfusepy.c_stat()
        mfusepy.set_st_attrs(theirs, attrs, use_ns=use_ns)
        set_stat(ours, attrs, use_ns)
        assert bytes(ours) == bytes(theirs)


def test_kernel_names_queue_a_call_s_names_at_once_within_the_bound():
    clock = Clock()
    names = KernelNames(1.0, clock=clock, limit=3)
    names.forget_later_all("/big", ["a"])  # no node id known: not queued
    names.directory("/big", 5)
    names.forget_later_all("/big", ["b", "c"])
    names.forget_later_all("/big", ["d", "e"])
    assert (names.queued, names.overflow) == (3, 1)
    told: list[tuple[int, str]] = []
    names._forget = lambda batch: told.extend(batch) or [0] * len(batch)
    clock.now += 1.0
    assert names.forget_due() == 3 and told == [(5, "b"), (5, "c"), (5, "d")]


def test_kernel_names_tell_the_due_names_in_batches_and_count_what_the_kernel_had():
    clock = Clock()
    names = KernelNames(1.0, clock=clock)
    names.directory("/big", 9)
    names.forget_later_all("/big", ["n%d" % i for i in range(NOTIFY_BATCH * 2 + 10)])
    batches: list[list[tuple[int, str]]] = []

    def forget(batch: list[tuple[int, str]]) -> list[int]:
        batches.append(batch)
        return [-errno.ENOENT if name.endswith("7") else 0 for _, name in batch]

    names._forget = forget
    clock.now += 1.0
    gone = sum(1 for i in range(NOTIFY_BATCH * 2 + 10) if i % 10 == 7)
    assert names.forget_due() == NOTIFY_BATCH * 2 + 10 - gone
    assert [len(b) for b in batches] == [NOTIFY_BATCH, NOTIFY_BATCH, 10]  # one call per batch, in order
    assert [name for b in batches for _, name in b] == ["n%d" % i for i in range(NOTIFY_BATCH * 2 + 10)]
    assert (names.batches, names.unknown) == (3, gone)


def test_kernel_names_cut_readdir_replies_past_the_names_held_and_wait_only_until_one_is_due():
    clock = Clock()
    waits: list[float] = []
    names = KernelNames(1.5, clock=clock, hold=3, wait=waits.append)
    names.directory("/big", 5)
    told: list[tuple[int, str]] = []
    names._forget = lambda batch: told.extend(batch) or [0] * len(batch)
    names.forget_later_all("/big", ["a", "b", "c"])
    assert not names.make_room() and names.shortened == 0  # 3 held: not over the bound
    clock.now += 1.0
    names.forget_later_all("/big", ["d"])  # 4 held, none due (the oldest in 0.5 s)
    assert names.make_room() and waits == [0.5]  # one name a reply, once the oldest is due
    assert names._wake.is_set()  # the thread is told to look at once
    clock.now += 0.5
    assert names.make_room() and waits == [0.5]  # due already: no wait
    assert names.forget_due() == 3 and told == [(5, "a"), (5, "b"), (5, "c")]
    assert names.held() == 1 and not names.make_room()
    assert names.counts() == {
        "queued": 4,
        "forgotten": 3,
        "unknown": 0,
        "not_queued": 0,
        "held": 1,
        "peak_held": 4,
        "shortened_replies": 2,
    }


def test_kernel_names_never_wait_longer_than_their_delay_nor_with_nothing_queued():
    clock = Clock()
    waits: list[float] = []
    names = KernelNames(1.5, clock=clock, hold=1, wait=waits.append)
    names.directory("/big", 5)
    names.forget_later_all("/big", ["a", "b"])
    clock.now -= 10  # a clock that went back: the wait is still at most the delay
    assert names.make_room() and waits == [1.5]
    names._due.clear()  # all of them being told (taken by the thread, not yet counted)
    assert names.make_room() and waits == [1.5]


class Listing:
    """Operations with one directory of files ``n0``, ``n1``, ... (a readdir's entries)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def readdir(self, path: str, fh: int) -> Any:
        yield "."
        yield ".."
        for i in range(self.count):
            yield "n%d" % i, {"st_mode": stat.S_IFREG | 0o644, "st_size": i}, 0


def binding(operations: Any, names: KernelNames) -> Any:
    """The FUSE binding's readdir over ``operations``, not mounted (its fields as __init__ sets them)."""
    fuse = FUSE.__new__(FUSE)
    fuse.operations, fuse._kernel_names, fuse._fuse_pointer = operations, names, None
    fuse._listings, fuse._listings_lock = {}, threading.Lock()
    fuse.encoding, fuse.errors, fuse.use_ns = "utf-8", "surrogateescape", True
    fuse._layout_warned, fuse._expire_ok, fuse._plus_always = False, True, False
    fuse._first_reply = getattr(operations, "first_readdir_reply", 0)
    return fuse


def readdir_reply(fuse: Any, offset: int, flags: int, room: int) -> list[tuple[str, bool]]:
    """One readdir call of the kernel's with a buffer of ``room`` entries: (name, with attributes)."""
    got: list[tuple[str, bool]] = []

    def filler(buf: Any, name: bytes, st: Any, off: int, fill_flags: int) -> int:
        if len(got) == room:
            return 1  # full
        got.append((name.decode(), bool(fill_flags)))
        return 0

    fip = SimpleNamespace(contents=SimpleNamespace(fh=1))
    assert fuse.readdir_fuse_3(b"/big", None, filler, offset, fip, flags) == 0
    return got


def test_readdirplus_of_a_large_directory_hands_out_one_name_a_reply_past_the_names_held():
    clock = Clock()
    waits: list[float] = []
    names = KernelNames(1.5, clock=clock, hold=3, wait=waits.append)
    names.directory("/big", 5)
    names.large("/big")
    fuse = binding(Listing(20), names)
    first = readdir_reply(fuse, 0, FUSE_READDIR_PLUS, 4)
    assert first == [(".", False), ("..", False), ("n0", True), ("n1", True)]
    assert readdir_reply(fuse, 4, FUSE_READDIR_PLUS, 4) == [("n%d" % i, True) for i in range(2, 6)]
    assert names.held() == 6 and waits == []  # 2 held before this call: not over the bound of 3
    # Over the bound: one name a reply, however much room, once the oldest name is due.
    assert readdir_reply(fuse, 8, FUSE_READDIR_PLUS, 4) == [("n6", True)]
    assert waits == [1.5] and names.shortened == 1
    # A plain readdir hands the kernel no name to hold (the type only): not cut.
    assert readdir_reply(fuse, 9, 0, 4) == [("n%d" % i, False) for i in range(7, 11)]
    assert names.held() == 7 and names.peak == 7


def test_a_large_directorys_later_readdir_calls_hand_attributes_only_after_lookups_in_it():
    """With the kernel's readdirplus_auto off every readdir asks with attributes; a large
    directory's calls after its first give them only where one of its names was looked up
    since the last call (ls -l, du), as the kernel's own choice would: find, which looks
    nothing up, leaves no node per name."""
    names = KernelNames(1.5, clock=Clock(), wait=lambda s: pytest.fail("waited"))
    names.directory("/big", 5)
    names.large("/big")
    fuse = binding(Listing(20), names)
    fuse._plus_always = True
    assert [plus for _, plus in readdir_reply(fuse, 0, FUSE_READDIR_PLUS, 4)] == [False, False, True, True]
    assert readdir_reply(fuse, 4, FUSE_READDIR_PLUS, 4) == [("n%d" % i, False) for i in range(2, 6)]
    names.forget_later("/big", "n2")  # a lookup of one of its names (the operations' getattr)
    assert readdir_reply(fuse, 8, FUSE_READDIR_PLUS, 4) == [("n%d" % i, True) for i in range(6, 10)]
    assert readdir_reply(fuse, 12, FUSE_READDIR_PLUS, 4) == [("n%d" % i, False) for i in range(10, 14)]
    names.directory("/small", 6)
    names.forget_later("/small", "x")  # not large: nothing to advise
    assert not names.advised("/small")


def test_readdirplus_of_a_small_directory_is_never_cut():
    names = KernelNames(1.5, clock=Clock(), hold=0, wait=lambda s: pytest.fail("waited"))
    names.directory("/big", 5)  # not said to be large: its names are the kernel's to keep
    fuse = binding(Listing(10), names)
    assert len(readdir_reply(fuse, 0, FUSE_READDIR_PLUS, 8)) == 8
    assert len(readdir_reply(fuse, 8, FUSE_READDIR_PLUS, 8)) == 4
    assert names.held() == 0 and names.shortened == 0


def test_a_directorys_first_readdir_reply_is_short_and_the_rest_full():
    """The first reply of a directory read anew holds the operations' first_readdir_reply entries
    (besides . and ..) however much room the kernel's buffer has: ls -l stats those before it
    reads on, which starts the stat-ahead, and the later replies (full) go out whole. A rewind
    starts a new stream: short again. No entry is lost or repeated."""
    listing = Listing(40)
    listing.first_readdir_reply = 3  # type: ignore[attr-defined]
    names = KernelNames(1.5, clock=Clock(), wait=lambda s: pytest.fail("waited"))
    fuse = binding(listing, names)
    first = readdir_reply(fuse, 0, FUSE_READDIR_PLUS, 100)
    assert [n for n, _ in first] == [".", "..", "n0", "n1", "n2"]
    rest = readdir_reply(fuse, 5, FUSE_READDIR_PLUS, 100)
    assert [n for n, _ in rest] == ["n%d" % i for i in range(3, 40)]
    assert readdir_reply(fuse, 42, FUSE_READDIR_PLUS, 100) == []
    again = readdir_reply(fuse, 0, 0, 100)  # rewinddir: listed anew
    assert [n for n, _ in again] == [".", "..", "n0", "n1", "n2"]
    unbounded = binding(Listing(40), names)  # first_readdir_reply 0 (listing_attrs): as many as fit
    assert len(readdir_reply(unbounded, 0, FUSE_READDIR_PLUS, 100)) == 42


def unused(names: list[tuple[int, bytes]]) -> list[int]:
    raise AssertionError("the fallback was called: %r" % names)


def test_an_entry_notifier_writes_one_notification_a_name_with_one_system_call_a_batch():
    # A pipe in place of the FUSE device: what the kernel would read, byte for byte.
    read_end, write_end = os.pipe()
    notifier = EntryNotifier(write_end, unused)
    try:
        if not notifier.batched:
            pytest.skip("no native AIO on this machine (libfuse's call is used)")
        names = [(1, b"a"), (77, b"f000123"), (2**40, "é".encode())]
        assert notifier.invalidate(names) == [0, 0, 0]
        got = os.read(read_end, 4096)
        many = [(5, b"n%04d" % i) for i in range(NOTIFY_BATCH + 3)]  # two batches
        assert notifier.invalidate(many) == [0] * len(many)
        more = b""
        while len(more) < sum(32 + len(raw) + 1 for _, raw in many):
            more += os.read(read_end, 65536)
    finally:
        notifier.close()
        os.close(read_end)
        os.close(write_end)

    def wire(names: list[tuple[int, bytes]]) -> bytes:
        # fuse_out_header (len, error = FUSE_NOTIFY_INVAL_ENTRY, unique = 0), then
        # fuse_notify_inval_entry_out (parent, namelen, flags), the name and a NUL
        return b"".join(
            struct.pack("=IiQQII", 32 + len(raw) + 1, 3, 0, parent, len(raw), 0) + raw + b"\0"
            for parent, raw in names
        )

    assert got == wire(names)
    assert more == wire(many)


def test_an_entry_notifier_whose_system_call_fails_hands_the_names_to_its_fallback():
    read_end, write_end = os.pipe()
    handed: list[list[tuple[int, bytes]]] = []
    notifier = EntryNotifier(read_end, lambda names: handed.append(names) or [-errno.ENOENT] * len(names))
    try:
        if not notifier.batched:
            pytest.skip("no native AIO on this machine (libfuse's call is used)")
        # Not open for writing: io_submit fails as a whole (EBADF), not name by name.
        assert notifier.invalidate([(1, b"a"), (1, b"b")]) == [-errno.ENOENT, -errno.ENOENT]
        assert not notifier.batched  # given up: the fallback from now on
        assert notifier.invalidate([(1, b"c")]) == [-errno.ENOENT]
        assert handed == [[(1, b"a"), (1, b"b")], [(1, b"c")]]
    finally:
        notifier.close()
        os.close(read_end)
        os.close(write_end)


def test_joining_names_is_posix_join():
    pairs = (("/", "a"), ("/x", "a"), ("/x/", "a"), ("", "a"), ("/x", "/a"), ("/x", ""), ("x", "b"))
    for parent, name in pairs:
        assert KeyMap.join(parent, name) == posixpath.join(parent, name)


class Entries:
    """An iterator that counts what was taken from it."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at, self.taken = count, fail_at, 0

    def __iter__(self) -> Entries:
        return self

    def __next__(self) -> str:
        if self.taken == self.fail_at:
            self.fail_at = None
            raise OSError(5, "listing failed")
        if self.taken >= self.count:
            raise StopIteration
        self.taken += 1
        return "e%d" % (self.taken - 1)


def test_a_dir_stream_holds_only_the_entry_the_kernel_had_no_room_for():
    source = Entries(100)
    stream = DirStream(source)
    assert stream.at(0) == "e0" and source.taken == 1
    stream.taken()
    assert stream.at(1) == "e1"  # the kernel's buffer was full: asked again at 1
    assert stream.at(1) == "e1" and source.taken == 2
    stream.taken()
    assert stream.at(5) == "e5" and source.taken == 6  # a seek ahead skips
    assert not stream.can_seek(3)  # behind: the caller starts again (rewinddir)
    assert stream.can_seek(5)
    for i in range(5, 100):
        assert stream.at(i) == "e%d" % i
        stream.taken()
    assert stream.at(100) is None


def test_a_dir_stream_failure_after_entries_went_out_is_told_at_the_next_call():
    stream = DirStream(Entries(10, fail_at=3))
    for i in range(3):
        assert stream.at(i, filled=i > 0) == "e%d" % i
        stream.taken()
    assert stream.at(3, filled=True) is None  # this call's entries go out ...
    with pytest.raises(OSError):
        stream.at(3)  # ... and the next call fails


def test_a_listing_that_fails_is_listed_again_at_the_next_call(tmp_path):
    store = big_store(2500)
    ops = make_ops(tmp_path, store)
    real_list = store.list

    def failing_list(*args, **kwargs):
        for number, page in enumerate(real_list(*args, **kwargs)):
            if number == 1 and store.calls["fail"] == 0:
                store.calls["fail"] += 1
                raise S3Error(503, "SlowDown")
            yield page

    store.list = failing_list
    got = 0
    with pytest.raises(FuseOSError) as raised:
        for _ in ops.readdir("/big", 1):
            got += 1
    assert raised.value.errno == errno.EIO  # an honest error, not the end of the directory
    assert 2 < got < 2502  # the first page went out, then the failure
    assert len(list(ops.readdir("/big", 2))) == 2502  # listed again


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_kernel_names_are_forgotten_once_their_delay_has_passed_in_order_and_bounded():
    clock = Clock()
    names = KernelNames(1.5, clock=clock, limit=3)
    told: list[tuple[int, str]] = []
    names.start = lambda forget: setattr(names, "_forget", forget)  # no thread: forget_due by hand
    names.start(lambda batch: told.extend(batch) or [0 if n != "gone" else -errno.ENOENT for _, n in batch])
    names.forget_later("/big", "a")  # the directory's node id is not known yet: not queued
    names.directory("/big", 7)
    names.forget_later("/big", "b")
    clock.now += 1.0
    names.forget_later("/big", "gone")
    names.forget_later("/big", "c")
    names.forget_later("/big", "d")  # over the limit of 3 queued
    assert names.forget_due() == 0 and told == []  # nothing due yet
    clock.now += 0.5
    assert names.forget_due() == 1 and told == [(7, "b")]
    clock.now += 1.0
    assert names.forget_due() == 1 and told[1:] == [(7, "gone"), (7, "c")]
    assert (names.queued, names.forgotten, names.unknown, names.overflow) == (3, 2, 1, 1)


def test_names_of_a_large_directory_are_queued_to_be_forgotten_and_of_a_small_one_not(tmp_path):
    if LIBFUSE_MAJOR != 3:
        pytest.skip("only libfuse3 can tell the kernel to forget names")
    store = big_store(3000)
    for i in range(50):
        store.put("small/f%02d" % i, b"")
    opts = MountOptions(cache_dir=str(tmp_path / "cache"), attr_cache=1000)
    ops = S3Operations(Bucket(store, "bucket"), "", opts, mountpoint=str(tmp_path / "mnt"))
    ops.namespace.configure_directories()
    names = ops.kernel_names
    assert names is not None
    names.directory("/big", 11)
    names.directory("/small", 12)
    listed = [e for e in ops.readdir("/big", 1) if not isinstance(e, str)]
    assert len(listed) == 3000
    # Past the names kept: the FUSE binding queues what readdirplus hands the kernel.
    assert names.is_large("/big") and names.queued == 0
    ops.getattr("/big/f000001")  # a lookup in the walked directory
    assert names.queued == 1
    assert len([e for e in ops.readdir("/small", 2) if not isinstance(e, str)]) == 50
    ops.getattr("/small/f01")
    assert not names.is_large("/small") and names.queued == 1  # a small directory: the kernel keeps it


def test_attr_cache_option_has_a_floor():
    assert MountOptions.parse(["attr_cache=500"]).attr_cache == 500
    with pytest.raises(OptionError, match="attr_cache=10"):
        MountOptions.parse(["attr_cache=10"])


# -- through a real mount ------------------------------------------------------------------


GETDENTS64 = {"x86_64": 217, "aarch64": 61}
DT_UNKNOWN, DT_DIR, DT_REG = 0, 4, 8


def getdents(fd: int, size: int = 4096) -> list[str]:
    """The names one getdents64 of ``size`` bytes returns (glibc's readdir asks for up to 1 MiB
    at once, so a small read is made here directly)."""
    return [name for name, _ in getdents_typed(fd, size)]


def getdents_typed(fd: int, size: int = 4096) -> list[tuple[str, int]]:
    """(name, d_type) of what one getdents64 of ``size`` bytes returns."""
    number = GETDENTS64.get(os.uname().machine)
    if number is None:
        pytest.skip("no getdents64 number known for %s" % os.uname().machine)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(number, fd, buf, size)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, pos, raw = [], 0, buf.raw[:n]
    while pos < n:  # struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name
        (reclen,) = struct.unpack_from("H", raw, pos + 16)
        names.append((raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode(), raw[pos + 18]))
        pos += reclen
    return names


def put_many(boto, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: boto.put_object(Bucket=bucket, Key=k, Body=b"%d" % len(k)), keys))


def requests_of(proxy, since: int) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(method, path, query) of the requests the proxy saw from index ``since`` on."""
    out = []
    for method, target in proxy.seen[since:]:
        path, _, query = target.partition("?")
        out.append((method, urllib.parse.unquote(path), urllib.parse.parse_qs(query)))
    return out


@pytest.mark.fuse
def test_a_large_directory_streams_and_is_walked_without_a_head_per_entry(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    count = 2500  # three listing pages
    put_many(boto, bucket, ["big/f%05d" % i for i in range(count)])
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    # Objects of no metadata (another tool's), and the mount told so: listings say all.
    mount = mount_factory("attr_cache=300,listing_attrs", config=config).start()
    big = os.path.join(mount.path, "big")
    mark = len(faultproxy.seen)
    fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = getdents(fd)  # one small read, as a reader that prints as it goes makes

        def listed() -> list[dict[str, list[str]]]:
            seen = requests_of(faultproxy, mark)
            return [q for m, _, q in seen if m == "GET" and q.get("prefix") == ["big/"]]

        pages = listed()
        assert first[:3] == [".", "..", "f00000"] or first[:3] == ["..", ".", "f00000"]
        assert pages and "continuation-token" not in pages[0]
        # The next page is fetched while the reader takes the first (fs/listahead.py), one only.
        deadline = time.monotonic() + 30  # a bound on the wait, not on how long it takes
        while len(pages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            pages = listed()
        assert len(pages) == 2 and "continuation-token" in pages[1]
        # A page that fails is an error for that read, not the end of the directory; the read
        # after it lists again from where the reader was.
        faultproxy.fail_next(1, status=403)
        rest, failed = [], []
        for _ in range(count):
            try:
                more = getdents(fd)
            except OSError as exc:
                failed.append(exc.errno)
                continue
            if not more:
                break
            rest += more
    finally:
        os.close(fd)
    assert failed == [errno.EACCES]
    assert sorted(first + rest) == sorted([".", ".."] + ["f%05d" % i for i in range(count)])
    # glibc's readdir reads st_blksize bytes of entries at once: a directory's is small, so that
    # a program reading it (ls -f, os.scandir) gets the first page's entries without the rest.
    assert os.stat(big).st_blksize <= 32 * 1024
    env = dict(os.environ, LC_ALL="C")
    for command in (["ls", "-l", big], ["find", big], ["du", "-s", "--apparent-size", "-b", big]):
        mark = len(faultproxy.seen)
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
        seen = requests_of(faultproxy, mark)
        heads = [p for m, p, _ in seen if m == "HEAD" and p.startswith("/%s/big/f" % bucket)]
        assert heads == [], command  # no HEAD per entry
        if command[0] == "ls":
            assert len(out.splitlines()) == count + 1  # "total" and each file
        elif command[0] == "find":
            assert len(out.splitlines()) == count + 1  # the directory and each file
        else:
            assert int(out.split()[0]) == sum(len(b"%d" % len("big/f%05d" % i)) for i in range(count))
    mount.stop()


@pytest.mark.fuse
def test_new_files_in_a_directory_made_or_listed_cost_one_put_each_and_no_head(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    boto.put_object(Bucket=bucket, Key="old/a", Body=b"a")
    for directory in ("new", "old"):
        path = os.path.join(mount.path, directory)
        if directory == "new":
            os.mkdir(path)
        else:
            assert os.listdir(path) == ["a"]
        mark = len(faultproxy.seen)
        for i in range(50):  # over dir_ttl or not: listed again at most once a second, no HEAD
            with open(os.path.join(path, "f%02d" % i), "wb") as f:
                f.write(b"x" * 4096)
        seen = requests_of(faultproxy, mark)
        new = "/%s/%s/f" % (bucket, directory)
        assert [m for m, p, _ in seen if p.startswith(new)] == ["PUT"] * 50, directory  # no HEAD
    listed = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix="new/")["Contents"]}
    assert listed >= {"new/f%02d" % i for i in range(50)}
    mount.stop()


@pytest.mark.fuse
def test_new_files_in_a_directory_another_client_made_and_not_listed_cost_no_lookup_each(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """cp -r into a directory that is there already, not listed by this mount: the first new
    name is looked up alone (a HEAD, a LIST or two), the second lists the directory (one page),
    whose names answer the rest (listed again from the new name on as it expires, once per
    dir_ttl): far fewer than the HEAD and LIST or two per file it cost before (600 here)."""
    put_many(boto, bucket, ["there/old%02d" % i for i in range(20)])
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    path = os.path.join(mount.path, "there")
    assert os.path.isdir(path)  # looked up, not listed
    mark = len(faultproxy.seen)
    count = 200
    for i in range(count):
        with open(os.path.join(path, "f%03d" % i), "wb") as f:
            f.write(b"x" * 100)
    seen = requests_of(faultproxy, mark)
    new = "/%s/there/f" % bucket
    heads = [p for m, p, _ in seen if m == "HEAD" and p.startswith(new)]
    lists = [q for m, p, q in seen if m == "GET" and p.rstrip("/") == "/" + bucket and "list-type" in q]
    puts = [p for m, p, _ in seen if m == "PUT" and p.startswith(new)]
    print("lookup requests for %d new files: %d HEAD, %d LIST" % (count, len(heads), len(lists)))
    assert len(puts) == count
    # A few for the first name and the listing, then one LIST a dir_ttl (1 s) the burst lasts,
    # or a HEAD and a LIST or two after a pause longer than dir_ttl: bounded well below 1 a file.
    assert len(heads) + len(lists) <= count // 4, (len(heads), len(lists))
    keys = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix="there/f")["Contents"]}
    assert keys == {"there/f%03d" % i for i in range(count)}
    mount.stop()


@pytest.mark.fuse
def test_cp_r_into_a_tree_whose_keys_another_client_deleted_asks_no_new_files_name(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """SeaweedFS keeps a directory whose keys were all deleted (the bench's cp -r copies into
    the tree the round before left so): each is a directory to ``stat``, empty. cp -r into such
    a tree sends no HEAD or LIST of a new file's name (a HEAD and three LISTs for each
    directory's first file before: its listing, or its parent's, tells), and lists each
    directory at most once; every file reaches S3."""
    src = tmp_path / "src"
    rels = ["d%d/e%d/f%d" % (d, e, i) for d in range(2) for e in range(3) for i in range(3)]
    for rel in rels:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    put_many(boto, bucket, ["tree/" + rel for rel in rels])
    boto.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "tree/" + rel} for rel in rels]})
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    mark = len(faultproxy.seen)
    subprocess.run(["cp", "-rT", str(src), os.path.join(mount.path, "tree")], check=True)
    seen = requests_of(faultproxy, mark)
    files = ["/%s/tree/%s" % (bucket, rel) for rel in rels]
    assert [p for m, p, _ in seen if m == "HEAD" and p in files] == []
    lists = [q["prefix"][0] for m, _, q in seen if m == "GET" and "list-type" in q and "prefix" in q]
    assert [p for p in lists if "/f" in p] == []  # no LIST of a new file's keys
    dirs = [p for p in lists if p.endswith("/")]
    assert len(dirs) == len(set(dirs)), dirs  # each directory listed once at most
    for rel in rels:
        assert boto.get_object(Bucket=bucket, Key="tree/" + rel)["Body"].read() == rel.encode()
    mount.stop()


@pytest.mark.fuse
def test_another_clients_name_after_a_create_bursts_listing_is_not_overwritten(mount_factory, boto, bucket):
    """A name another client puts after a create burst's listing of a directory that listing
    answers "no such entry" for (dir_ttl, as a readdir's): a create of it here does not replace
    theirs (If-None-Match: *): ESTALE at close, theirs kept, ours beside it."""
    boto.put_object(Bucket=bucket, Key="cx/old", Body=b"1")
    mount = mount_factory(options="dir_ttl=60").start()  # the listing answers through the test
    d = os.path.join(mount.path, "cx")
    for name in ("a", "b"):  # the second lookup lists cx
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"x")
    boto.put_object(Bucket=bucket, Key="cx/theirs", Body=b"someone else's")
    fd = os.open(os.path.join(d, "theirs"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"mine")
    with pytest.raises(OSError) as exc:
        os.close(fd)  # the PUT's If-None-Match: * finds theirs
    assert exc.value.errno == errno.ESTALE
    assert boto.get_object(Bucket=bucket, Key="cx/theirs")["Body"].read() == b"someone else's"
    keys = [o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix="cx/")["Contents"]]
    aside = [k for k in keys if k.startswith("cx/theirs.conflict-")]
    assert len(aside) == 1 and boto.get_object(Bucket=bucket, Key=aside[0])["Body"].read() == b"mine"
    mount.stop()


@pytest.mark.fuse
def test_a_create_burst_lists_from_the_new_name_on_not_the_whole_directory(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    put_many(boto, bucket, ["burst/a%03d" % i for i in range(300)])
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    path = os.path.join(mount.path, "burst")
    assert len(os.listdir(path)) == 300
    mark = len(faultproxy.seen)
    for i in range(40):  # over 4 s: the listing (dir_ttl 1 s) expires in the burst
        time.sleep(0.1)
        with open(os.path.join(path, "f%02d" % i), "wb") as f:
            f.write(b"x" * 4096)
    seen = requests_of(faultproxy, mark)
    assert [m for m, p, _ in seen if p.startswith("/%s/burst/f" % bucket)] == ["PUT"] * 40  # no HEAD
    lists = [q for m, _, q in seen if m == "GET" and q.get("prefix") == ["burst/"]]
    assert lists  # listed again as it expired ...
    assert all(q.get("start-after", [""])[0] >= "burst/f" for q in lists), lists  # ... never the a... again
    assert len(os.listdir(path)) == 340
    mount.stop()


@pytest.mark.fuse
@pytest.mark.parametrize(
    "deleted, gone",
    [
        (["top/left/e/f"], "top/left/e"),
        (["top/left/e/", "top/left/e/f"], "top/left/e"),
        (["top/left/e/f", "top/left/e/"], "top/left"),
    ],
    ids=["implicit", "marker_in_key_order", "marker_last"],
)
def test_a_directory_another_client_emptied_is_one_to_ls_stat_cd_readdir_and_rmdir_alike(
    mount_factory, boto, bucket, deleted, gone
):
    """SeaweedFS keeps a directory whose keys another client deleted (``top/left/e`` when its
    keys go, ``top/left`` when ``e``'s ``dir/`` marker goes last, which takes ``e`` away): it
    lists it as a common prefix of its parent and answers a HEAD of its ``dir/``, but a LIST
    of the keys beginning with its name finds nothing. What ``ls`` shows, a lookup says (a
    cold one too): an empty directory, which rmdir removes, leaving nothing of it in S3."""
    for key in sorted(deleted):
        boto.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"1")
    mount = mount_factory().start()
    assert os.listdir(os.path.join(mount.path, "top", "left")) == ["e"]  # seen whole first
    for key in deleted:
        boto.delete_object(Bucket=bucket, Key=key)
    parent, name = gone.rsplit("/", 1)
    shown = boto.list_objects_v2(Bucket=bucket, Prefix=parent + "/", Delimiter="/").get("CommonPrefixes", [])
    inside = boto.list_objects_v2(Bucket=bucket, Prefix=gone + "/", Delimiter="/")
    if [p["Prefix"] for p in shown] != [gone + "/"] or inside.get("CommonPrefixes"):
        pytest.skip("this server keeps no emptied directory")
    path = os.path.join(mount.path, gone)
    time.sleep(1.5)  # what the mount saw (attr_ttl, dir_ttl: 1 s) has expired: asked again
    assert os.path.isdir(path)  # a cold lookup, before any listing
    assert os.listdir(os.path.join(mount.path, parent)) == [name]
    assert stat.S_ISDIR(os.stat(path).st_mode)
    here = os.getcwd()
    os.chdir(path)
    try:
        assert os.listdir(".") == []
    finally:
        os.chdir(here)
    with pytest.raises(FileExistsError):
        os.mkdir(path)
    os.rmdir(path)
    assert name not in os.listdir(os.path.join(mount.path, parent))
    with pytest.raises(FileNotFoundError):
        os.stat(path)
    mount.stop()
    left = boto.list_objects_v2(Bucket=bucket, Prefix=gone).get("Contents", [])
    assert [o["Key"] for o in left] == []


@pytest.mark.fuse
def test_a_tree_another_client_makes_while_the_mount_lists_its_parent_shows_whole(place, boto):
    """boto3 puts a/b/c while ls a goes on in a loop: each listing is a's files with or without
    b (never an error, never a name twice); once dir_ttl passed, b is listed, looked up and
    read through as S3 has it."""
    put_many(boto, place.bucket, [place.key("a/f%02d" % i) for i in range(50)])
    path = os.path.join(place.path, "a")
    files = ["f%02d" % i for i in range(50)]
    assert sorted(os.listdir(path)) == files
    stop = threading.Event()
    seen: list[list[str]] = []

    def lister() -> None:
        while not stop.is_set():
            seen.append(sorted(os.listdir(path)))

    t = threading.Thread(target=lister)
    t.start()
    try:
        boto.put_object(Bucket=place.bucket, Key=place.key("a/b/c"), Body=b"c")
        eventually(lambda: seen and "b" in seen[-1], what="b in a's listing")
    finally:
        stop.set()
        t.join(60)
    assert all(listed in (files, sorted(files + ["b"])) for listed in seen)
    assert os.path.isdir(os.path.join(path, "b")) and os.listdir(os.path.join(path, "b")) == ["c"]
    with open(os.path.join(path, "b", "c"), "rb") as f:
        assert f.read() == b"c"


@pytest.fixture
def moto_mount(mount_factory, moto_server, bucket, tmp_path):
    """A mount of ``bucket`` on moto (which stores keys as given: ``a//b``, ``./f``) and a client."""
    client = s3rig.make_boto_client(moto_server.endpoint, moto_server.access_key, moto_server.secret_key)
    client.create_bucket(Bucket=bucket)
    settings = {
        "access_key_id": moto_server.access_key,
        "secret_access_key": moto_server.secret_key,
        "default_bucket": bucket,
        "endpoint": moto_server.endpoint,
        "tls": False,
    }
    config = s3rig.write_s3yaml(tmp_path / "moto.yaml", settings)
    yield SimpleNamespace(client=client, make=lambda: mount_factory(config=str(config)))
    s3rig.empty_and_delete_bucket(client, bucket)


@pytest.mark.fuse
def test_keys_no_name_can_show_are_left_out_once_each_and_keep_their_directory(moto_mount, bucket):
    """Another tool's keys that no path can name (an empty segment, '.', '..') are left out of
    listings with one log line each, never shown as another file; a directory holding only
    such keys looks empty, and its rmdir is ENOTEMPTY with a line that says why (it removed
    nothing before, and the directory came back). A file and a directory of one name (``x``
    and ``x/``) show as the directory, whose files are reachable."""
    keys = ["a//b", "/lead", "./f", "../e", "c/./d", "x", "x/", "x/in", "ok"]
    for key in keys:
        moto_mount.client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    mount = moto_mount.make().start()
    assert sorted(os.listdir(mount.path)) == ["a", "c", "ok", "x"]
    assert [stat.S_ISDIR(os.stat(os.path.join(mount.path, n)).st_mode) for n in "acx"] == [True] * 3
    assert os.listdir(os.path.join(mount.path, "a")) == os.listdir(os.path.join(mount.path, "c")) == []
    assert os.listdir(os.path.join(mount.path, "x")) == ["in"]
    with open(os.path.join(mount.path, "x", "in"), "rb") as f:
        assert f.read() == b"x/in"
    for name in "ac":
        with pytest.raises(OSError) as exc:
            os.rmdir(os.path.join(mount.path, name))
        assert exc.value.errno == errno.ENOTEMPTY
    mount.stop()
    with open(mount.log_path) as f:
        log = f.read()
    for shown in ("'/'", "'./'", "'../'", "'a//'", "'c/./'"):
        assert log.count("object %s is not shown" % shown) == 1, shown
    assert "directory /a is not empty: it holds a//, which no name can show" in log
    assert "Traceback" not in log
    left = moto_mount.client.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(o["Key"] for o in left) == sorted(keys)


@pytest.mark.fuse
def test_a_directory_shadows_a_file_of_its_name_in_every_order(mount_factory, boto, bucket):
    """Found in round 34: another tool's file ``a`` beside keys ``a/x`` (S3 allows both) was a
    file to a stat before any listing of its parent and a directory to ``ls``, or a file to
    ``ls -l`` too once stat had seen it: ``rm a`` then deleted the file under a directory.
    The directory shadows the file (as mountpoint-s3), whichever is asked first, after the
    TTLs too; the file is left in S3 untouched and shows again once the directory is gone."""
    keys = {"sh/a": b"file a", "sh/a/x": b"x", "sh/b": b"file b", "sh/b/y": b"y", "sh/c": b"c"}
    for key, body in keys.items():
        boto.put_object(Bucket=bucket, Key=key, Body=body)
    mount = mount_factory().start()
    d = os.path.join(mount.path, "sh")
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    assert stat.S_ISDIR(os.stat(a).st_mode)  # a: a cold stat first; b: the listing first
    assert sorted((e.name, e.is_dir()) for e in os.scandir(d)) == [("a", True), ("b", True), ("c", False)]
    assert [stat.S_ISDIR(os.lstat(p).st_mode) for p in (a, b)] == [True, True]
    time.sleep(2.5)  # every TTL past: asked of S3 again
    assert [stat.S_ISDIR(os.stat(p).st_mode) for p in (a, b)] == [True, True]
    assert os.listdir(a) == ["x"]
    with open(os.path.join(a, "x"), "rb") as f:
        assert f.read() == b"x"
    with pytest.raises(IsADirectoryError):
        with open(a, "rb") as f:
            f.read()
    with pytest.raises(IsADirectoryError):
        os.unlink(a)
    with pytest.raises(OSError) as exc:
        os.rmdir(a)
    assert exc.value.errno == errno.ENOTEMPTY
    os.rename(b, os.path.join(d, "moved"))  # the directory moves; the file b stays
    assert os.listdir(os.path.join(d, "moved")) == ["y"]
    os.unlink(os.path.join(a, "x"))
    os.rmdir(a)  # SeaweedFS answers a HEAD of "sh/a/" with the file: no bytes of the directory's
    left = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix="sh/")["Contents"]}
    assert {"sh/a", "sh/b", "sh/c", "sh/moved/y"} <= left and not {"sh/a/x", "sh/b/y"} & left
    for name in ("a", "b"):
        assert boto.get_object(Bucket=bucket, Key="sh/" + name)["Body"].read() == keys["sh/" + name]
    time.sleep(2.5)  # what this mount removed is absent for attr_ttl: then S3 says, a file
    for name in ("a", "b"):
        with open(os.path.join(d, name), "rb") as f:
            assert f.read() == keys["sh/" + name]
    assert "'sh/a' and directory 'sh/a'/ share a name: the directory is shown" in mount.log()
    mount.stop()


@pytest.mark.fuse
def test_other_tools_names_on_a_server_that_keeps_keys_as_given(moto_mount, bucket):
    """Round 34's hunt, on moto (keys as given, as AWS): a name over 255 bytes is left out with
    one log line (its directory's rmdir ENOTEMPTY); a file beside an empty directory's ``sx/``
    marker is shadowed by it from a cold stat on, and shows once that directory is removed; a
    trailing space, a tab, DEL and both forms of "café" (NFC, NFD: two keys) are names,
    stat, read, renamed and removed as themselves; ``find``, ``du`` and ``rsync -a`` walk it all."""
    client = moto_mount.client
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    odd = ["sp ", "del\x7fx", nfc, nfd, " lead", "tab\tx"]  # (a newline: moto's server cannot)
    keys = ["long/" + "n" * 256, "long/" + "m" * 255, "sx", "sx/"] + ["odd/" + n for n in odd]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else key.encode())
    mount = moto_mount.make().start()
    sx = os.path.join(mount.path, "sx")
    assert stat.S_ISDIR(os.stat(sx).st_mode) and os.listdir(sx) == []  # a cold stat first
    assert os.listdir(os.path.join(mount.path, "long")) == ["m" * 255]
    with pytest.raises(OSError) as exc:
        os.rmdir(os.path.join(mount.path, "long"))
    assert exc.value.errno == errno.ENOTEMPTY
    d = os.path.join(mount.path, "odd")
    assert sorted(os.listdir(d)) == sorted(odd)
    for name in odd:
        with open(os.path.join(d, name), "rb") as f:
            assert f.read() == ("odd/" + name).encode(), name
        os.rename(os.path.join(d, name), os.path.join(d, name + ".r"))
    assert sorted(os.listdir(d)) == sorted(n + ".r" for n in odd)
    found = subprocess.run(["find", mount.path], capture_output=True, check=True).stdout.split(b"\n")
    assert sorted(p for p in found if p.startswith(os.fsencode(d) + b"/")) == sorted(
        os.fsencode(os.path.join(d, n + ".r")) for n in odd
    )
    subprocess.run(["du", "-s", mount.path], capture_output=True, check=True)
    copy = mount.path + "-rsync"
    subprocess.run(["rsync", "-a", d + "/", copy + "/"], check=True)
    assert sorted(os.listdir(copy)) == sorted(n + ".r" for n in odd)
    for name in odd:
        os.unlink(os.path.join(d, name + ".r"))
    os.rmdir(sx)  # the empty directory (its marker) goes; the file sx shows
    time.sleep(2.5)  # what this mount removed is absent for attr_ttl
    with open(sx, "rb") as f:
        assert f.read() == b"sx"
    mount.stop()
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert left == sorted(["long/" + "n" * 256, "long/" + "m" * 255, "sx"])
    with open(mount.log_path) as f:
        log = f.read()
    assert log.count("object 'long/%s' is not shown" % ("n" * 256)) == 1
    assert "Traceback" not in log


def _rmdir_keeps_data_in_directory_objects(
    client, bucket: str, root: str, prefix: str, log: Callable[[], str], kept_by_server: set[str]
) -> None:
    """Found in round 33: another client's bytes in a directory's own objects (a ``d/`` marker
    with a body, a ``d_$folder$`` with a body, a ``d`` whose x-amz-meta-mode says directory),
    which no name shows, were deleted by an rmdir of ``d`` without a word. rmdir is ENOTEMPTY
    with a line naming the key, as for a directory holding keys no name can show; with its
    listing read first (rm -r) too; an empty marker's directory still goes. ``kept_by_server``:
    the keys whose body the server keeps (SeaweedFS drops a ``d/`` marker's). In directory ``root``
    of the mount, whose keys begin with ``prefix``; ``log()``: what the mount logged meanwhile."""
    data = {"m/": b"marker data", "f_$folder$": b"folder data", "o": b"object data"}
    for key, body in data.items():
        client.put_object(Bucket=bucket, Key=prefix + key, Body=body,
                          Metadata={"mode": "16877"} if key == "o" else {})
    client.put_object(Bucket=bucket, Key=prefix + "e/", Body=b"")
    held = {key for key in data if client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()}
    assert held == kept_by_server
    for key in held:
        name = key.rstrip("/").removesuffix("_$folder$")
        assert os.path.isdir(os.path.join(root, name)), name
        for listed in (False, True):
            if listed:
                assert os.listdir(os.path.join(root, name)) == []
            with pytest.raises(OSError) as e:
                os.rmdir(os.path.join(root, name))
            assert e.value.errno == errno.ENOTEMPTY, (key, listed)
        assert client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read() == data[key]
        assert "its object %s holds 11 bytes, which no name shows" % (prefix + key) in log(), key
    os.rmdir(os.path.join(root, "e"))
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "e")


@pytest.mark.fuse
def test_rmdir_keeps_data_in_directory_objects_on_moto(moto_mount, bucket):
    mount = moto_mount.make().start()
    _rmdir_keeps_data_in_directory_objects(moto_mount.client, bucket, mount.path, "", mount.log,
                                           {"m/", "f_$folder$", "o"})


@pytest.mark.fuse
def test_rmdir_keeps_data_in_directory_objects_on_seaweedfs(place, boto):
    _rmdir_keeps_data_in_directory_objects(boto, place.bucket, place.path, place.prefix, place.log,
                                           {"f_$folder$", "o"})


@pytest.mark.fuse
@pytest.mark.parametrize("server_rename", [True, False])
def test_a_file_rename_sends_one_rename_or_the_copy_and_the_delete_and_only_the_kernels_lookups(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, server_rename
):
    body = b"x" * 100_000
    boto.put_object(Bucket=bucket, Key="r/src", Body=body, Metadata={"mode": "33152"})
    etag = boto.head_object(Bucket=bucket, Key="r/src")["ETag"]
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    options = "attr_ttl=30" + ("" if server_rename else ",server_rename=off")
    mount = mount_factory(options, config=config).start()  # attr_ttl: the kernel keeps its entry of src
    src, dst = os.path.join(mount.path, "r", "src"), os.path.join(mount.path, "r", "dst")
    assert os.stat(src).st_size == 100_000
    mark = len(faultproxy.seen)
    os.rename(src, dst)
    seen = requests_of(faultproxy, mark)
    # the version looked up is moved (x-amz-rename-source-if-match or x-amz-copy-source-if-match):
    # no HEAD of src; the target is looked up by the kernel only
    to_dst = [m for m, p, _ in seen if p == "/%s/r/dst" % bucket]
    put = [target for m, target in faultproxy.seen[mark:] if m == "PUT"]
    if server_rename:  # SeaweedFS 4 has RenameObject: one request moves the object, nothing to delete
        assert [m for m, p, _ in seen if p == "/%s/r/src" % bucket] == []
        # then a self-copy stores its new ctime (RenameObject keeps the metadata; round 38)
        assert to_dst == ["HEAD", "PUT", "PUT"]
        assert len(put) == 2 and put[0].endswith("?renameObject=") and "?" not in put[1]
        assert boto.head_object(Bucket=bucket, Key="r/dst")["ETag"] == etag  # the very object, moved
    else:
        assert to_dst == ["HEAD", "PUT"]
        assert [m for m, p, _ in seen if p == "/%s/r/src" % bucket] == ["DELETE"]
        assert len(put) == 1 and "?" not in put[0]  # a CopyObject (carrying the new ctime)
    assert boto.get_object(Bucket=bucket, Key="r/dst")["Body"].read() == body
    assert boto.head_object(Bucket=bucket, Key="r/dst")["Metadata"]["mode"] == "33152"
    assert os.stat(dst).st_mode == 0o100600
    assert "Contents" not in boto.list_objects_v2(Bucket=bucket, Prefix="r/src")
    mount.stop()


@pytest.mark.fuse
def test_a_directory_rename_moves_its_files_by_rename_object(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    files = ["m/a", "m/b", "m/s/c"]
    for key in files:
        boto.put_object(Bucket=bucket, Key=key, Body=key.encode())
    boto.put_object(Bucket=bucket, Key="m/s/", Body=b"")
    etags = {key: boto.head_object(Bucket=bucket, Key=key)["ETag"] for key in files}
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    mark = len(faultproxy.seen)
    os.rename(os.path.join(mount.path, "m"), os.path.join(mount.path, "n"))
    renames = sorted(t.partition("?")[0] for m, t in faultproxy.seen[mark:] if t.endswith("?renameObject="))
    assert renames == ["/%s/n/a" % bucket, "/%s/n/b" % bucket, "/%s/n/s/c" % bucket]
    assert not [t for m, t in faultproxy.seen[mark:] if m == "PUT" and t.startswith("/%s/n/" % bucket)
                and "?" not in t and not t.endswith("/")]  # no file copied
    assert sorted(os.listdir(os.path.join(mount.path, "n"))) == ["a", "b", "s"]
    assert open(os.path.join(mount.path, "n", "s", "c"), "rb").read() == b"m/s/c"
    keys = sorted(o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert [k for k in keys if k.startswith("m/")] == []
    assert {"n/a", "n/b", "n/s/c", "n/s/"} <= set(keys)
    assert {k: boto.head_object(Bucket=bucket, Key="n/" + k[2:])["ETag"] for k in files} == etags
    mount.stop()


@pytest.mark.fuse
def test_the_kernel_forgets_names_of_a_walked_directory_and_keeps_those_of_a_small_one(
    mount_factory, boto, bucket
):
    if LIBFUSE_MAJOR != 3:
        pytest.skip("only libfuse3 can tell the kernel to forget names")
    put_many(boto, bucket, ["big/f%05d" % i for i in range(1500)] + ["small/f%d" % i for i in range(5)])
    mount = mount_factory("attr_cache=300").start()  # directories of over 300 names are walked
    env = dict(os.environ, LC_ALL="C")
    big, small = os.path.join(mount.path, "big"), os.path.join(mount.path, "small")
    for where in (big, small):
        subprocess.run(["ls", "-l", where], capture_output=True, env=env, timeout=120, check=True)

    def forgotten(path: str) -> bool:
        """libfuse numbers inodes by its node id: a new number is a new node, the old one freed
        when the kernel forgot the name (each lookup here queues the name again)."""
        first = os.lstat(path).st_ino
        deadline = time.monotonic() + 60  # forgotten attr_ttl + 0.5 s after the lookup: 1.5 s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if os.lstat(path).st_ino != first:
                return True
        return False

    assert forgotten(os.path.join(big, "f01200"))  # handed out past the names kept, then looked up
    assert forgotten(os.path.join(big, "f00003"))  # among the first: looked up in a walked directory
    # A small directory's names stay in the kernel's cache, and libfuse's node with them.
    path = os.path.join(small, "f1")
    first = os.lstat(path).st_ino
    time.sleep(3)  # twice the time a walked directory's name is kept
    assert os.lstat(path).st_ino == first
    mount.stop()


@pytest.mark.fuse
def test_the_kernel_is_told_in_batches_to_forget_every_name_a_walk_of_a_large_directory_took(
    mount_factory, boto, bucket
):
    if LIBFUSE_MAJOR != 3:
        pytest.skip("only libfuse3 can tell the kernel to forget names")
    count = 3000
    put_many(boto, bucket, ["big/f%05d" % i for i in range(count)])
    mount = mount_factory("attr_cache=300,listing_attrs").start()  # over 300 names: a large directory
    big = os.path.join(mount.path, "big")
    env = dict(os.environ, LC_ALL="C")
    # ls -li: each name with its attributes (readdirplus), its inode number libfuse's node id
    lines = subprocess.run(
        ["ls", "-li", big], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    numbers = {line.split()[-1]: int(line.split()[0]) for line in lines.stdout.splitlines()[1:]}
    assert sorted(numbers) == ["f%05d" % i for i in range(count)]
    # Names from the whole directory are forgotten (libfuse's node freed: a lookup makes a new
    # one, with a new number), not only as many as fit a queue or a thread's pace.
    left = {"f%05d" % i for i in range(0, count, 97)}
    deadline = time.monotonic() + 120  # a bound on the wait (forgotten 1.5 s after), not a timing
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = {name for name in left if os.lstat(os.path.join(big, name)).st_ino == numbers[name]}
    assert not left
    # The walks still show every entry, and its size, after their names were forgotten.
    listing = subprocess.run(
        ["ls", "-l", big], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    entries = listing.stdout.splitlines()[1:]
    assert len(entries) == count and all(line.split()[4] == "2" for line in entries)
    found = subprocess.run(["find", big], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert len(found.stdout.splitlines()) == count + 1
    mount.stop()
    lines = mount.log_lines()
    assert not [line for line in lines if "io_submit to the FUSE device failed" in line]
    told = [line for line in lines if "kernel names:" in line]
    match = re.search(
        r"(\d+) forgotten, .* told in (\d+) batches \(io_submit batches\)", told[-1] if told else ""
    )
    assert match, told
    forgotten, batches = int(match[1]), int(match[2])
    assert forgotten >= count - 300  # the names past the first 300, at least (ls -li's)
    assert batches * 10 < forgotten  # many names a system call


@pytest.mark.fuse
def test_a_walk_of_a_large_directory_holds_about_attr_cache_names_at_once_and_none_once_told(
    mount_factory, boto, bucket
):
    if LIBFUSE_MAJOR != 3:
        pytest.skip("only libfuse3 can tell the kernel to forget names")
    count, hold = 4000, 1000
    put_many(boto, bucket, ["big/f%05d" % i for i in range(count)])
    mount = mount_factory("attr_cache=%d,listing_attrs" % hold).start()
    big = os.path.join(mount.path, "big")
    env = dict(os.environ, LC_ALL="C")
    listing = subprocess.run(["ls", "-l", big], capture_output=True, text=True, env=env, timeout=300)
    entries = listing.stdout.splitlines()[1:]
    assert [line.split()[-1] for line in entries] == ["f%05d" % i for i in range(count)]
    counts = json.loads(os.getxattr(mount.path, "s3.status"))["kernel_names"]
    # Past attr_cache names held, readdir handed out one name a reply until some were told:
    # the kernel (and libfuse) never held the whole directory at once.
    assert counts["shortened_replies"] > 0
    assert counts["peak_held"] < count
    # Each name told is let go of: nothing is kept per name the kernel forgot.
    deadline = time.monotonic() + 120  # a bound on the wait (told 1.5 s after), not a timing
    while counts["held"] and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = json.loads(os.getxattr(mount.path, "s3.status"))["kernel_names"]
    assert counts["held"] == 0 and counts["queued"] == counts["forgotten"] + counts["unknown"]
    assert counts["queued"] >= count - hold  # past the first names a listing keeps (attr_cache)
    mount.stop()
    told = [line for line in mount.log_lines() if "kernel names:" in line]
    assert told and "readdir replies cut to one name (over %d held)" % hold in told[-1]


@pytest.mark.fuse
@pytest.mark.parametrize("listing_attrs", [False, True])
def test_every_entry_of_a_large_directory_has_its_type_so_find_stats_none(
    mount_factory, boto, bucket, listing_attrs
):
    count = 1500
    put_many(boto, bucket, ["big/f%05d" % i for i in range(count)] + ["big/sub/x"])
    for i in range(20):  # too big to be links
        boto.put_object(Bucket=bucket, Key="big/g%d" % i, Body=b"g" * 5000)
    mount = mount_factory("listing_attrs" if listing_attrs else "").start()
    fd = os.open(os.path.join(mount.path, "big"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries: list[tuple[str, int]] = []
        while True:  # small reads: the kernel asks with attributes (readdirplus) first, then without
            more = getdents_typed(fd, 2048)
            if not more:
                break
            entries += more
    finally:
        os.close(fd)
    kinds = {n[0]: {t for m, t in entries if m[0] == n[0]} for n, _ in entries if n[0] in "fgs"}
    assert len([n for n, _ in entries if n.startswith("f")]) == count
    # d_type from every reply, with attributes or not: find learns from it that an entry is no
    # directory, without a lookup (and a node in libfuse) per entry. Where the objects may carry
    # a mode (not listing_attrs), a small one may be a link: its type is not told.
    small = DT_REG if listing_attrs else DT_UNKNOWN
    assert kinds == {"f": {small}, "g": {DT_REG}, "s": {DT_DIR}}
    mount.stop()


@pytest.mark.fuse
def test_a_remount_shows_what_it_saw_of_files_with_no_head_and_asks_of_what_changed(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """fs/known.py: what HEADs told is kept in the cache directory by version (ETag, size,
    Last-Modified), so ls -l of files seen before costs the listing alone."""
    for i in range(30):
        boto.put_object(
            Bucket=bucket,
            Key="s/f%02d" % i,
            Body=b"x",
            Metadata={"mode": str(0o100600), "uid": "42", "gid": "43"},
        )
    boto.put_object(Bucket=bucket, Key="s/link", Body=b"f00", Metadata={"mode": str(0o120777)})
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    cache = str(tmp_path / "kept-cache")
    env = dict(os.environ, LC_ALL="C")

    def ls_l() -> tuple[str, list[str]]:
        # attr_ttl=30: under load a walk can stall past the default 1 s, and an answer fetched
        # ahead that is older than attr_ttl when its stat comes is asked again (a second HEAD).
        mount = mount_factory("attr_ttl=30", config=config, cache_dir=cache).start()
        try:
            mark = len(faultproxy.seen)
            out = subprocess.run(
                ["ls", "-ln", os.path.join(mount.path, "s")],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            heads = [p for m, p, _ in requests_of(faultproxy, mark) if m == "HEAD" and "/s/" in p[:-1]]
        finally:
            assert mount.stop() == 0
        return out, heads

    first, heads = ls_l()
    assert len(heads) == 31  # each file once: its mode is in its metadata
    again, heads = ls_l()
    assert again == first and heads == []
    assert "lrwxrwxrwx" in again and again.count("-rw------- 1 42 43") == 30
    # Another client's chmod: a self-copy (the same ETag) with a later Last-Modified.
    time.sleep(1.1)
    boto.copy_object(
        Bucket=bucket,
        Key="s/f07",
        CopySource={"Bucket": bucket, "Key": "s/f07"},
        Metadata={"mode": str(0o100640), "uid": "42", "gid": "43"},
        MetadataDirective="REPLACE",
    )
    changed, heads = ls_l()
    assert [h.rsplit("/", 1)[1] for h in heads] == ["f07"]
    assert "-rw-r----- 1 42 43" in changed
