"""The prefetcher on its own, on the fake store: fetches into staged files, races, failures, checks."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections import deque

import pytest
from fakestore import FakeStore

from s3fs_mount.fs.errors import Corrupt, FsError
from s3fs_mount.fs.prefetch import (
    MAX_RANDOM_BLOCK,
    PAGE,
    RANDOM_BYTES_BOUND,
    Prefetcher,
    ReadState,
    random_block,
)
from s3fs_mount.fs.staging import StagedFile, StagingCache
from s3fs_mount.s3 import checksums
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import VERIFIED
from s3fs_mount.s3.errors import ConnectionFailed, S3Error

MiB = 1 << 20


def parts_of(bucket: Bucket):
    """The prefetcher's ``part_layout_of`` on ``bucket``, as the operations give it the namespace's."""
    return lambda key, etag, size, parts, every: bucket.part_layout(key, size, parts, every)


def setup(tmp_path, size: int, chunk: int = MiB) -> tuple[FakeStore, bytes, Prefetcher, StagedFile]:
    """Object "k" of ``size`` random bytes, a prefetcher, and an item that is a clean copy of it."""
    store = FakeStore()
    data = os.urandom(size)
    store.put("k", data)
    bucket = Bucket(store, "bucket")
    prefetcher = Prefetcher(
        bucket, max_window=4 * chunk, chunk=chunk, workers=2, part_layout_of=parts_of(bucket)
    )
    cache = StagingCache(str(tmp_path / "cache"), "bucket", 1 << 30)
    item, _ = cache.acquire("k")
    info = store.head("k")
    item.reset(info.size, info.etag, info.metadata, info.headers, info.mtime)
    return store, data, prefetcher, item


def test_ensure_fetches_what_is_missing_once(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 5 * MiB)
    prefetcher.ensure(item, MiB, 3 * MiB)
    assert item.read(MiB, 2 * MiB) == data[MiB : 3 * MiB]
    gets = store.calls["GET"]
    prefetcher.ensure(item, MiB, 2 * MiB)
    assert store.calls["GET"] == gets  # local now
    assert item.remote_gaps(0, 5 * MiB) == [(0, MiB), (3 * MiB, 5 * MiB)]


def test_a_failed_fetch_raises_and_leaves_the_range_to_the_next_read(tmp_path, monkeypatch):
    store, data, prefetcher, item = setup(tmp_path, 3 * MiB)
    real = store.get_range

    def failing(*args, **kwargs):
        raise S3Error(500, "InternalError", "no bytes today")

    monkeypatch.setattr(store, "get_range", failing)
    with pytest.raises(S3Error):
        prefetcher.ensure(item, 0, 2 * MiB)  # two pieces, in parallel: both claims released
    with pytest.raises(S3Error):
        prefetcher.ensure(item, 0, MiB // 2)  # one piece, in this thread
    assert item.claim_missing(0, 3 * MiB, wait=False) == [(0, 3 * MiB)]  # nothing left in flight
    item.unclaim([(0, 3 * MiB)])
    monkeypatch.setattr(store, "get_range", real)
    prefetcher.ensure(item, 0, 2 * MiB)
    assert item.read(0, 2 * MiB) == data[: 2 * MiB]


def test_a_write_racing_a_fetch_of_its_bytes_wins(tmp_path, monkeypatch):
    """The write waits for the fetch in flight, then lands over the fetched bytes."""
    store, data, prefetcher, item = setup(tmp_path, 2 * MiB)
    real = store.get_range
    writers: list[threading.Thread] = []

    def get_range(*args, **kwargs):
        answer = real(*args, **kwargs)
        if not writers:  # a write of these bytes comes in while the GET is under way
            writer = threading.Thread(target=item.write, args=(100, b"WRITTEN"))
            writers.append(writer)
            writer.start()
            while writer.is_alive() and not item.cond._waiters:  # type: ignore[attr-defined]
                writer.join(0.001)
        return answer

    monkeypatch.setattr(store, "get_range", get_range)
    prefetcher.ensure(item, 0, 2 * MiB)
    writers[0].join()
    assert item.read(0, 2 * MiB) == data[:100] + b"WRITTEN" + data[107 : 2 * MiB]
    assert item.view().dirty


def test_a_fetch_of_a_version_replaced_meanwhile_is_not_filled(tmp_path, monkeypatch):
    store, data, prefetcher, item = setup(tmp_path, MiB)
    real = store.get_range

    def get_range(*args, **kwargs):
        answer = real(*args, **kwargs)
        item.stored_as("v-new")  # our own upload moved the item on while the GET was under way
        return answer

    monkeypatch.setattr(store, "get_range", get_range)
    fetched = []
    prefetcher.on_fetched = fetched.append
    prefetcher._fetch(item, 0, MiB, item.claim_missing(0, MiB))
    assert fetched == [] and item.claim_missing(0, MiB, wait=False) == [(0, MiB)]  # nothing present


def test_a_small_object_is_fetched_whole_and_checked_before_it_is_served(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 100_000)
    store.flip_reads = 1  # one byte changed on the way
    with pytest.raises(Corrupt):
        prefetcher.ensure(item, 0, 4096)
    assert item.remote_gaps(0, 100_000) == [(0, 100_000)]  # nothing of it kept
    assert store.calls["GET"] == 1  # whole, in one GET
    prefetcher.ensure(item, 0, 4096)  # fetched again, right this time
    assert item.read(0, 100_000) == data


def test_a_handle_whose_read_failed_its_check_stays_failed(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 100_000)
    store.flip_reads = 1
    state = ReadState()
    with pytest.raises(FsError) as failed:  # streamed to a sequential reader, checked at its end
        prefetcher.read(item, state, 0, 100_000)
    assert failed.value.errno == errno.EIO
    with pytest.raises(FsError):
        prefetcher.read(item, state, 0, 4096)
    assert prefetcher.read(item, ReadState(), 0, 100_000) == data  # another handle reads again


def test_background_readahead_fills_the_staged_file_of_a_file_being_written(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 8 * MiB)
    item.write(0, b"w")  # being written: the staged file is the reader's source
    state = ReadState()
    out = b"".join(prefetcher.read(item, state, off, MiB) for off in range(0, 8 * MiB, MiB))
    assert out == b"w" + data[1 : 8 * MiB]
    prefetcher.close()


def test_random_block_grows_near_recent_misses_and_shrinks_far_from_them():
    recent = deque([100 * MiB])
    assert random_block(PAGE, recent, 100 * MiB + 5 * PAGE) == 4 * PAGE  # near: x4
    assert random_block(MAX_RANDOM_BLOCK // 2, recent, 100 * MiB - PAGE) == MAX_RANDOM_BLOCK  # capped
    assert random_block(64 * PAGE, recent, 300 * MiB) == 32 * PAGE  # far from all: halves
    assert random_block(PAGE, recent, 300 * MiB) == PAGE  # never below a page
    assert random_block(PAGE, deque(), 0) == PAGE  # the first miss: a page


def random_reads(prefetcher, item, offsets, size=PAGE):
    """Reads of ``size`` at ``offsets`` through one handle, none following the one before (nor
    the handle's first: one within two readaheads of byte 0 begins a stream there, as the kernel's
    first READs may come in any order)."""
    state = ReadState(next_offset=-1, first=False)
    return [prefetcher.read(item, state, off, size) for off in offsets]


def test_random_reads_spread_over_a_file_fetch_the_pages_they_read(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 64 * MiB, chunk=16 * MiB)
    offsets = [i * 3 * MiB + 5 * PAGE for i in range(20)]  # each miss far from the others
    got = random_reads(prefetcher, item, offsets)
    assert got == [data[off : off + PAGE] for off in offsets]
    assert store.calls["GET"] == 20 and store.calls["bytes down"] == 20 * PAGE


def test_random_reads_that_cluster_are_served_by_fewer_larger_gets(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 64 * MiB, chunk=16 * MiB)
    rng = random.Random(5)
    base = 40 * MiB
    offsets = [base + rng.randrange(2 * MiB // PAGE) * PAGE for _ in range(400)]  # all in 2 MiB
    got = random_reads(prefetcher, item, offsets)
    assert got == [data[off : off + PAGE] for off in offsets]
    pages = len(set(offsets))  # what fetching the pages read would take
    assert store.calls["GET"] < pages // 2  # blocks grew as the credit of the reads allowed
    assert store.calls["bytes down"] <= RANDOM_BYTES_BOUND * PAGE * len(offsets)


def test_random_reads_fetch_at_most_the_bound_times_what_they_read(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 64 * MiB, chunk=16 * MiB)
    offsets = [i * MiB // 2 for i in range(100)]  # every miss near the last: the block wants to grow
    random.Random(6).shuffle(offsets)
    got = random_reads(prefetcher, item, offsets)
    assert got == [data[off : off + PAGE] for off in offsets]
    assert PAGE * len(offsets) < store.calls["bytes down"] <= RANDOM_BYTES_BOUND * PAGE * len(offsets)


def test_a_random_read_across_a_block_boundary_gets_both_blocks(tmp_path):
    store, data, prefetcher, item = setup(tmp_path, 64 * MiB, chunk=16 * MiB)
    # far from any miss: halves to 512 KiB; credit for it from earlier reads
    state = ReadState(next_offset=-1, block=MAX_RANDOM_BLOCK, asked=MiB)
    off = 3 * MiB - 100
    assert prefetcher.read(item, state, off, 300) == data[off : off + 300]
    half = MAX_RANDOM_BLOCK // 2
    assert item.remote_gaps(0, 64 * MiB) == [(0, 3 * MiB - half), (3 * MiB + half, 64 * MiB)]
    assert store.calls["GET"] == 1  # the two aligned blocks, in one GET


def _logged_gets(store: FakeStore) -> list[tuple[str, int, int]]:
    """Record each GET of ``store`` as (key, start, length), in order."""
    gets: list[tuple[str, int, int]] = []
    get_range = store.get_range

    def logged(remote_name, start, length, if_match=None):
        gets.append((getattr(remote_name, "key", remote_name), start, length))
        return get_range(remote_name, start, length, if_match)

    store.get_range = logged
    return gets


def readers_of(tmp_path, keys: tuple[str, ...], size: int, workers: int, readahead: int = MiB):
    """Objects ``keys`` of ``size`` random bytes, a prefetcher of 2 MiB pieces (1 MiB shared) in
    a window of 8 MiB with ``workers`` GETs per reader (the kernel's ``readahead``), a clean item
    and a ReadState of each."""
    store = FakeStore()
    data = {key: os.urandom(size) for key in keys}
    for key, body in data.items():
        store.put(key, body)
    bucket = Bucket(store, "bucket")
    prefetcher = Prefetcher(
        bucket, 8 * MiB, chunk=4 * MiB, piece=2 * MiB, workers=workers, part_layout_of=parts_of(bucket),
        readahead=readahead,
    )
    cache = StagingCache(str(tmp_path / "cache"), "bucket", 1 << 30)
    items = {}
    for key in data:
        items[key], _ = cache.acquire(key)
        info = store.head(key)
        items[key].reset(info.size, info.etag, info.metadata, info.headers, info.mtime)
    return store, data, prefetcher, items, {key: ReadState() for key in data}


def two_readers(tmp_path, size: int, workers: int):
    """Objects "a" and "b" (readers_of), and the list their GETs are logged in."""
    store, data, prefetcher, items, states = readers_of(tmp_path, ("a", "b"), size, workers)
    return store, data, prefetcher, items, states, _logged_gets(store)


def test_readers_streaming_at_once_fetch_half_pieces_and_each_gets_its_bytes(tmp_path):
    size = 24 * MiB
    store, data, prefetcher, items, states, gets = two_readers(tmp_path, size, workers=4)
    got = {key: [] for key in data}
    step = 256 << 10

    def read(key: str) -> None:
        at = sum(len(b) for b in got[key])
        got[key].append(prefetcher.read(items[key], states[key], at, step))

    read("a")  # alone: whole pieces
    first_a = [n for k, _, n in gets if k == "a"]
    for _ in range(size // 2 // step):  # both stream, turn about
        read("a")
        read("b")
    b_shared = [n for k, _, n in gets if k == "b"]
    held_end = max(s + n for s, (n, _) in states["b"].pieces.items())
    prefetcher.drop(states["a"])  # "a" is closed: "b" streams alone again
    while sum(len(x) for x in got["b"]) < size:
        read("b")
    b_alone = [n for k, s, n in gets if k == "b" and s >= held_end]
    assert b"".join(got["b"]) == data["b"]  # checked at the end: no EIO
    assert b"".join(got["a"]) == data["a"][: len(b"".join(got["a"]))]
    assert set(first_a) == {2 * MiB}
    assert set(b_shared) == {MiB}
    assert b_alone and set(b_alone[:-1]) == {2 * MiB}  # the last may end at the object's end
    b_ranges = sorted((s, s + n) for k, s, n in gets if k == "b")
    assert b_ranges[0][0] == 0 and b_ranges[-1][1] == size  # each byte fetched once:
    assert all(e == s for (_, e), (s, _) in zip(b_ranges, b_ranges[1:], strict=False))
    assert prefetcher.held <= 4 * MiB  # only "b"'s last pieces


def test_a_corrupt_half_piece_of_one_of_several_readers_is_eio_for_that_reader_only(tmp_path):
    size = 8 * MiB
    store, data, prefetcher, items, states, gets = two_readers(tmp_path, size, workers=1)
    assert prefetcher.read(items["a"], states["a"], 0, MiB) == data["a"][:MiB]
    for _, future in list(states["a"].pieces.values()):  # its GETs ahead are done
        future.result()
    store.flip_reads = 1  # the next GET: the first of "b", a half piece
    assert prefetcher.read(items["b"], states["b"], 0, MiB) != data["b"][:MiB]  # checked at the end
    assert gets[len([g for g in gets if g[0] == "a"])] == ("b", 0, MiB)
    with pytest.raises(FsError) as failed:  # at the end of "b": its bytes did not match
        prefetcher.read(items["b"], states["b"], MiB, size)
    assert failed.value.errno == errno.EIO
    assert prefetcher.read(items["a"], states["a"], MiB, size) == data["a"][MiB:]  # checked: fine


def test_a_read_straddling_two_blocks_is_answered_with_spans_of_both_uncopied(tmp_path):
    # The kernel's readahead for a reader of 256 KiB sends 1 MiB at 512 KiB offsets: such a read
    # is the spans of the two blocks that hold it, the piece's own bytes objects (the FUSE
    # binding copies each into libfuse's buffer), not a join of them; read() is the same bytes.
    size = 4 * MiB
    store, data, prefetcher, item = setup(tmp_path, size, chunk=4 * MiB)
    state = ReadState()
    assert prefetcher.read(item, state, 0, MiB // 2) == data[: MiB // 2]
    spans = prefetcher.read_spans(item, state, MiB // 2, MiB)
    assert [(len(d), a, b) for d, a, b in spans] == [(MiB, MiB // 2, MiB), (MiB, 0, MiB // 2)]
    blocks = state.pieces[0][1].result()
    assert spans[0][0] is blocks[0] and spans[1][0] is blocks[1]
    assert b"".join(d[a:b] for d, a, b in spans) == data[MiB // 2 : 3 * MiB // 2]
    assert prefetcher.read_spans(item, state, 3 * MiB // 2, MiB // 2) == [(blocks[1], MiB // 2, MiB)]
    (whole,) = prefetcher.read_spans(item, state, 2 * MiB, MiB)
    assert whole[0] is blocks[2] and whole[1:] == (0, MiB)  # a whole block: itself
    assert prefetcher.read(item, state, 3 * MiB, MiB) == data[3 * MiB :]


@pytest.mark.parametrize("size", [100_000, 6 * MiB], ids=["one piece", "several pieces"])
def test_a_second_stream_of_a_version_already_checked_is_checked_again(tmp_path, size):
    store, data, prefetcher, item = setup(tmp_path, size)
    assert prefetcher.read(item, ReadState(), 0, size) == data  # read whole and checked: fine
    store.flip_reads = 1  # the next reader's first GET has a byte changed on the way
    state = ReadState()
    with pytest.raises(FsError) as failed:  # its bytes are checked too, not taken as checked before
        prefetcher.read(item, state, 0, size)
    assert failed.value.errno == errno.EIO and not store.flip_reads
    assert prefetcher.read(item, ReadState(), 0, size) == data  # and a third reader, right again


def test_the_kernel_may_keep_the_pages_of_a_file_one_reader_streamed_whole_and_checked(tmp_path):
    size = 6 * MiB
    store, data, prefetcher, item = setup(tmp_path, size)
    assert not item.kernel_may_keep()  # nothing read yet
    state = ReadState()
    assert prefetcher.read(item, state, 0, MiB) == data[:MiB]
    assert not item.kernel_may_keep()  # part of it: not checked whole
    assert prefetcher.read(item, state, MiB, size) == data[MiB:]
    assert item.kernel_may_keep()  # every byte through this reader's stream, checked
    assert prefetcher.read(item, state, 0, 4096) == data[:4096]  # a random read: from elsewhere
    assert not item.kernel_may_keep()


def test_pages_of_a_corrupt_stream_or_of_two_readers_at_once_are_not_kept(tmp_path):
    size = 6 * MiB
    store, data, prefetcher, item = setup(tmp_path, size)
    store.flip_reads = 1
    with pytest.raises(FsError):
        prefetcher.read(item, ReadState(), 0, size)
    assert not item.kernel_may_keep()  # failed its check
    item.cache.acquire("k")  # a second handle open at once: its replies are not this stream's
    assert prefetcher.read(item, ReadState(), 0, size) == data
    assert not item.kernel_may_keep()
    item.cache.release(item)
    item.cache.release(item)  # both closed
    item.cache.acquire("k")  # opened alone: kept once read whole
    state = ReadState()
    assert prefetcher.read(item, state, 0, size) == data
    assert item.kernel_may_keep()
    info = store.head("k")
    item.reset(info.size, info.etag, info.metadata, info.headers, info.mtime)  # made anew, same version
    assert not item.kernel_may_keep()  # whatever the item held since: not known to be those pages
    assert prefetcher.read(item, ReadState(), 0, size) == data
    assert item.kernel_may_keep()
    item.write(0, b"x")  # written: the pages are not that version's any more
    assert not item.kernel_may_keep()


def test_a_stream_after_another_readers_part_of_it_checks_its_own_bytes(tmp_path):
    size = 6 * MiB
    store, data, prefetcher, item = setup(tmp_path, size)
    first = ReadState()
    assert prefetcher.read(item, first, 0, 2 * MiB) == data[: 2 * MiB]  # its check hashed these
    for _, future in list(first.pieces.values()):  # its GETs ahead are done (else one takes the flip)
        future.result()
    store.flip_reads = 1  # the next reader's first GET: bytes the first one's check hashed already
    with pytest.raises(FsError) as failed:
        prefetcher.read(item, ReadState(), 0, size)
    assert failed.value.errno == errno.EIO and not store.flip_reads


def test_a_piece_let_go_and_fetched_again_for_a_late_read_keeps_no_pages(tmp_path):
    size = 16 * MiB
    store, data, _, item = setup(tmp_path, size)
    bucket = Bucket(store, "bucket")  # pieces of 2 MiB, let go 4 MiB behind; reads 8 MiB behind still count
    prefetcher = Prefetcher(bucket, max_window=8 * MiB, chunk=8 * MiB, piece=2 * MiB, workers=2,
                            part_layout_of=parts_of(bucket))
    state = ReadState()
    for at in range(0, 12 * MiB, MiB):
        assert prefetcher.read(item, state, at, MiB) == data[at : at + MiB]
    gets = store.calls["GET"]
    assert prefetcher.read(item, state, 5 * MiB, MiB) == data[5 * MiB : 6 * MiB]  # delivered late
    assert store.calls["GET"] > gets  # its piece was let go: fetched again, and not hashed again
    for at in range(12 * MiB, size, MiB):
        assert prefetcher.read(item, state, at, MiB) == data[at : at + MiB]
    assert not item.kernel_may_keep()  # read whole and checked, but a page of it came unchecked

class GatedGets:
    """Holds every GET of ``store`` until :meth:`open`; counts those held, by key."""

    def __init__(self, store: FakeStore) -> None:
        self.cond = threading.Condition()
        self.gate = threading.Event()
        self.held: dict[str, int] = {}
        self.most: dict[str, int] = {}
        get_range = store.get_range

        def gated(remote_name, start, length, if_match=None):
            key = getattr(remote_name, "key", remote_name)
            with self.cond:
                self.held[key] = self.held.get(key, 0) + 1
                self.most[key] = max(self.most.get(key, 0), self.held[key])
                self.cond.notify_all()
            self.gate.wait()
            with self.cond:
                self.held[key] -= 1
            return get_range(remote_name, start, length, if_match)

        store.get_range = gated

    def wait_for(self, n: int) -> bool:
        """Wait until ``n`` GETs are held at once (False if they never are)."""
        with self.cond:
            return self.cond.wait_for(lambda: sum(self.held.values()) >= n, timeout=60)

    def open(self) -> None:
        self.gate.set()


def test_several_readers_have_gets_in_flight_side_by_side_past_one_readers_workers(tmp_path):
    """The GETs in flight are a budget of all readers (the window in shared pieces: 8 here), not
    ``workers`` (2) for all: four readers each have their 2 under way at once, not 2 in all."""
    keys = ("a", "b", "c", "d")
    size = 6 * MiB + 777
    store, data, prefetcher, items, states = readers_of(tmp_path, keys, size, workers=2)
    gets = GatedGets(store)
    got: dict[str, bytes] = {}

    def read(key: str) -> None:
        got[key] = prefetcher.read(items[key], states[key], 0, 256 << 10)

    threads = [threading.Thread(target=read, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    try:
        all_in_flight = gets.wait_for(8)
    finally:
        gets.open()
        for t in threads:
            t.join()
    assert all_in_flight, gets.most  # with one pool of 2 threads: 2 at most
    assert gets.most == {key: 2 for key in keys}  # each reader: its workers, no more
    for key in keys:  # and each gets its own bytes, checked at the end
        rest = prefetcher.read(items[key], states[key], len(got[key]), size)
        assert got[key] + rest == data[key]
        prefetcher.drop(states[key])
    assert prefetcher.held == 0


def test_a_lone_reader_has_at_most_its_workers_gets_in_flight(tmp_path):
    """A reader alone could fill its window (4 pieces ahead here) from the shared pool of 8
    threads; it asks for no more than ``workers`` (2) at once, the rest on its next reads."""
    size = 12 * MiB
    store, data, prefetcher, items, states = readers_of(tmp_path, ("a",), size, workers=2)
    got = [prefetcher.read(items["a"], states["a"], 0, MiB)]  # the window: 4 MiB, then 8
    for _, future in list(states["a"].pieces.values()):
        future.result()
    gets = GatedGets(store)
    try:
        got.append(prefetcher.read(items["a"], states["a"], MiB, MiB))  # its piece is here
        assert gets.wait_for(2)
        asked = sorted(states["a"].pieces)
    finally:
        gets.open()
    assert asked == [0, 2 * MiB, 4 * MiB, 6 * MiB]  # 2 GETs ahead, not 4 (to 12 MiB)
    at = 2 * MiB
    while at < size:  # the next reads go on ahead; every byte its own, checked at the end
        got.append(prefetcher.read(items["a"], states["a"], at, MiB))
        at += len(got[-1])
    assert b"".join(got) == data["a"]
    assert max(gets.most.values()) <= 2
    prefetcher.drop(states["a"])


def test_gets_in_flight_of_all_readers_are_the_window_in_shared_pieces_up_to_4_readers(tmp_path):
    """The defaults: a 64 MiB window of 4 MiB shared pieces, 16 GETs; a window of 1 GiB is not
    256 threads (and connections) but 4 readers' ``workers``; never fewer than one reader's."""
    bucket = Bucket(FakeStore(), "bucket")
    assert Prefetcher(bucket, 64 * MiB, workers=8).budget == 16
    assert Prefetcher(bucket, 1 << 30, workers=8).budget == 32
    assert Prefetcher(bucket, 8 * MiB, workers=8).budget == 8


def test_four_readers_at_once_share_the_window_evenly_and_none_is_starved(tmp_path):
    """fio's four sequential readers (bench/README.md, round 32): the pieces fetched ahead of
    them are the window (8 MiB here) over all, each reader's share a quarter of it. Counted
    after every read, once the first reader's pieces from while it was alone are behind it:
    no reader holds more than its share ahead, none is left with nothing ahead (each read
    tops its own share up), all four together stay within the window; every byte each
    reader gets is its own, checked at its end."""
    keys = ("a", "b", "c", "d")
    size = 24 * MiB
    store, data, prefetcher, items, states = readers_of(tmp_path, keys, size, workers=4)
    gets = _logged_gets(store)
    step = 512 << 10
    got: dict[str, list[bytes]] = {key: [] for key in keys}

    def ahead(key: str) -> int:
        state = states[key]
        for start in state.unreached:  # the fake store answers at once: let each GET finish
            state.pieces[start][1].result()
        return sum(state.pieces[start][0] for start in state.unreached)

    counted = 0
    for turn in range(size // step):
        for key in keys:
            at = turn * step
            got[key].append(prefetcher.read(items[key], states[key], at, step))
            if at < 10 * MiB or at + step + 4 * MiB > size:
                continue  # "a" alone at first (its whole window); the object's end
            counted += 1
            assert ahead(key) == 2 * MiB  # its share, topped up by its own read
            assert all(ahead(k) <= 2 * MiB for k in keys)
            assert sum(ahead(k) for k in keys) <= 8 * MiB
    assert counted >= 4 * 8
    for key in keys:
        assert b"".join(got[key]) == data[key]  # the last read's check passed: no EIO
        ranges = sorted((s, s + n) for k, s, n in gets if k == key)
        assert ranges[0][0] == 0 and ranges[-1][1] == size  # each byte fetched once
        assert all(e == s for (_, e), (s, _) in zip(ranges, ranges[1:], strict=False))
        prefetcher.drop(states[key])
    assert prefetcher.held == 0


def test_four_readers_reads_delivered_late_find_their_pieces_still_held(tmp_path):
    """Four readers streaming at once (pieces of 1 MiB, half of 2) at a kernel readahead of 2 MiB:
    each one's READ at the start of every 4 MiB comes after the three past it (FUSE threads deliver
    the kernel's READs out of order, up to two readaheads late). Its piece is still held: each
    byte fetched once, every reader checked from byte 0 and its pages kept. (Was: let go a piece
    behind, 1 MiB, and fetched again for the late READ, unchecked: 15-23 GETs of 4 MiB more a GiB
    for fio's four readers at ``kernel_readahead=4M``, bench/README.md round 40 h5.)"""
    keys = ("a", "b", "c", "d")
    size = 16 * MiB
    store, data, prefetcher, items, states = readers_of(tmp_path, keys, size, workers=4, readahead=2 * MiB)
    gets = _logged_gets(store)
    order = [at + d for at in range(0, size, 4 * MiB) for d in (MiB, 2 * MiB, 3 * MiB, 0)]
    got: dict[str, dict[int, bytes]] = {key: {} for key in keys}
    for at in order:
        for key in keys:
            got[key][at] = prefetcher.read(items[key], states[key], at, MiB)
    for key in keys:
        assert b"".join(got[key][at] for at in sorted(got[key])) == data[key]
        ranges = sorted((s, s + n) for k, s, n in gets if k == key)
        assert ranges[0][0] == 0 and ranges[-1][1] == size  # each byte fetched once
        assert all(e == s for (_, e), (s, _) in zip(ranges, ranges[1:], strict=False)), ranges
        assert states[key].verifier is not None and states[key].verifier.state == VERIFIED
        assert items[key].kernel_may_keep()  # every byte through its own stream, checked
        prefetcher.drop(states[key])
    assert prefetcher.held == 0


#: Another client's parts, sized part by part: no one size fits them (checked part by part
#: where S3 says each one is: s3fs_mount.s3.parts.PartBounds).
UNEQUAL = [5 * MiB, 7 * MiB + 1, 6 * MiB, 2 * MiB + 3]


def unequal_parts(tmp_path, sizes: list[int] = UNEQUAL) -> tuple[FakeStore, bytes, Prefetcher, StagedFile]:
    """Object "k" in parts of ``sizes``, with no checksum but its ETag, a prefetcher of 2 MiB
    pieces, and an item that is a clean copy of it."""
    store = FakeStore()
    data = os.urandom(sum(sizes))
    upload = store.start_multipart("k", checksum=False)
    at = 0
    for number, size in enumerate(sizes, start=1):
        upload.upload_part(number, data[at : at + size])
        at += size
    upload.complete()
    bucket = Bucket(store, "bucket")
    prefetcher = Prefetcher(
        bucket, 8 * MiB, chunk=4 * MiB, piece=2 * MiB, workers=2,
        part_layout_of=parts_of(bucket),
    )
    cache = StagingCache(str(tmp_path / "cache"), "bucket", 1 << 30)
    item, _ = cache.acquire("k")
    info = store.head("k")
    assert info.etag.endswith("-%d" % len(sizes))
    item.reset(info.size, info.etag, info.metadata, info.headers, info.mtime)
    return store, data, prefetcher, item


def stream_whole(prefetcher: Prefetcher, item: StagedFile, size: int) -> bytes:
    """Read an item from byte 0 to its end in 1 MiB reads through one handle."""
    state, got = ReadState(), []
    for at in range(0, size, MiB):
        got.append(prefetcher.read(item, state, at, MiB))
    return b"".join(got)


def test_a_stream_of_parts_of_sizes_of_their_own_is_checked_part_by_part(tmp_path):
    store, data, prefetcher, item = unequal_parts(tmp_path)
    assert stream_whole(prefetcher, item, len(data)) == data
    assert prefetcher._known_verifier("k", item.etag).state == VERIFIED  # not "part size unknown"
    assert store.calls["HEAD part"] == 4  # the first and the last, then the two between
    starts = [sum(UNEQUAL[:i]) for i in range(len(UNEQUAL))]
    obj = store._get("k")
    # A byte changed on the server (its ETag kept): in part 1, the first of part 2, the last of
    # part 3, the last of the short last part.
    for offset in (MiB, starts[1], starts[3] - 1, len(data) - 1):
        obj.data = data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]
        with pytest.raises(FsError) as failed:
            stream_whole(prefetcher, item, len(data))
        assert failed.value.errno == errno.EIO, offset
    obj.data = data
    assert stream_whole(prefetcher, item, len(data)) == data
    assert store.calls["HEAD part"] == 4  # a version's parts are asked for once


#: Parts whose first and last fit one size (8 MiB) while those between differ and add up.
ONE_SIZE_AT_THE_ENDS = [8 * MiB, 6 * MiB, 10 * MiB, 3 * MiB]


def test_a_stream_of_parts_that_only_look_of_one_size_is_eio_once_then_checked_where_they_are(tmp_path):
    store, data, prefetcher, item = unequal_parts(tmp_path, ONE_SIZE_AT_THE_ENDS)
    with pytest.raises(FsError) as failed:  # hashed on 8 MiB parts: not checked, so not served as such
        stream_whole(prefetcher, item, len(data))
    assert failed.value.errno == errno.EIO and "read it again" in str(failed.value)
    assert store.calls["HEAD part"] == 2 + 4  # the first and the last; then each part
    assert stream_whole(prefetcher, item, len(data)) == data  # checked where S3 says the parts are
    assert prefetcher._known_verifier("k", item.etag).state == VERIFIED
    obj = store._get("k")
    obj.data = data[:-1] + bytes([data[-1] ^ 1])  # and a byte changed on the server is still EIO
    with pytest.raises(FsError) as failed:
        stream_whole(prefetcher, item, len(data))
    assert failed.value.errno == errno.EIO and "do not match" in str(failed.value)
    assert store.calls["HEAD part"] == 6


def test_random_reads_of_parts_that_only_look_of_one_size_are_checked_where_they_are(tmp_path):
    store, data, prefetcher, item = unequal_parts(tmp_path, ONE_SIZE_AT_THE_ENDS)
    state = ReadState()
    got = {}
    for at in reversed(range(0, len(data), MiB)):  # from the end: never sequential
        got[at] = prefetcher.read(item, state, at, MiB)
    assert b"".join(got[at] for at in sorted(got)) == data  # no EIO: hashed again from the staged file
    assert store.calls["HEAD part"] == 2 + 4


def test_a_failed_check_of_parts_of_one_size_asks_where_each_part_is_once_a_version(tmp_path):
    sizes = [4 * MiB] * 5 + [MiB]  # one size: the check's guess was right, the bytes were wrong
    store, data, prefetcher, item = unequal_parts(tmp_path, sizes)
    obj = store._get("k")
    obj.data = data[:5] + bytes([data[5] ^ 1]) + data[6:]
    for _ in range(2):
        with pytest.raises(FsError) as failed:
            stream_whole(prefetcher, item, len(data))
        assert failed.value.errno == errno.EIO and "do not match" in str(failed.value)
    assert store.calls["HEAD part"] == 2 + len(sizes)  # the first and the last, then each once
    obj.data = data
    assert stream_whole(prefetcher, item, len(data)) == data


def test_a_failed_check_whose_part_heads_fail_too_is_still_eio(tmp_path):
    store, data, prefetcher, item = unequal_parts(tmp_path, ONE_SIZE_AT_THE_ENDS)
    asked = prefetcher.part_layout_of

    def failing(key, etag, size, parts, every):
        if every:
            raise ConnectionFailed("HEAD", "injected failure")
        return asked(key, etag, size, parts, every)

    prefetcher.part_layout_of = failing
    with pytest.raises(FsError) as failed:  # not ConnectionFailed's errno: the bytes were not checked
        stream_whole(prefetcher, item, len(data))
    assert failed.value.errno == errno.EIO
    prefetcher.part_layout_of = asked  # the next failed check asks again
    with pytest.raises(FsError):
        stream_whole(prefetcher, item, len(data))
    assert stream_whole(prefetcher, item, len(data)) == data


def test_ranges_of_a_version_checked_whole_are_fetched_in_its_checked_pieces_each_checked(tmp_path):
    # One MD5 of it all (one PUT): the whole check also hashed a CRC32 of each CRC32_PIECE; a
    # range fetched again (pages the kernel dropped) is fetched in those whole pieces, checked.
    size, piece = 20 * MiB + 5, checksums.CRC32_PIECE
    store, data, prefetcher, item = setup(tmp_path, size, chunk=4 * MiB)
    assert prefetcher.read(item, ReadState(), 0, size) == data  # read whole: checked
    gets = _logged_gets(store)
    state = ReadState()  # a random read, then a stream from there
    assert prefetcher.read(item, state, piece + MiB, 4096) == data[piece + MiB : piece + MiB + 4096]
    assert gets == [("k", piece, piece)]  # its piece, whole (4 KiB of it kept)
    at = piece + MiB + 4096
    assert prefetcher.read(item, state, at, 3 * MiB) == data[at : at + 3 * MiB]
    assert all(start % piece == 0 and length in (piece, size - start) for _, start, length in gets)
    store.flip_reads = 1  # a stream's first GET, a byte changed: EIO at once, not at the end
    state = ReadState()
    with pytest.raises(FsError) as failed:
        prefetcher.read(item, state, 0, MiB)
    assert failed.value.errno == errno.EIO and state.failed
    store.flip_reads = 1  # a random read's
    with pytest.raises(FsError) as failed:
        prefetcher.read(item, ReadState(), 2 * piece + 4096, 4096)
    assert failed.value.errno == errno.EIO
    assert prefetcher.read(item, ReadState(), 0, size) == data


@pytest.mark.parametrize("sizes", [UNEQUAL, ONE_SIZE_AT_THE_ENDS], ids=["unequal", "only look of one size"])
def test_a_version_fetched_whole_into_memory_is_checked_part_by_part(tmp_path, sizes):
    """fetch_version, the uploader's way down for another client's version our appends go after:
    the readers' check (each part's MD5 where S3 says it is, from the digest a HEAD told), not a
    digest of the whole alone (a version in parts came down unchecked: round 37's review)."""
    store, data, prefetcher, item = unequal_parts(tmp_path, sizes)
    info = store.head("k")
    assert prefetcher.fetch_version("k", info.etag, info.size, info.digest) == data
    obj = store._get("k")
    for offset in (MiB, sum(sizes[:2]), len(data) - 1):  # a byte changed on the server, its ETag kept
        obj.data = data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]
        with pytest.raises(Corrupt):
            prefetcher.fetch_version("k", info.etag, info.size, info.digest)
    obj.data = data[:-1]  # fewer bytes than the version holds
    with pytest.raises(Corrupt):
        prefetcher.fetch_version("k", info.etag, info.size, info.digest)
    obj.data = data
    assert prefetcher.fetch_version("k", info.etag, info.size, info.digest) == data


def kernel_order(size: int) -> list[int]:
    """Offsets of a sequential reader's 1 MiB READs as FUSE threads deliver a 4 MiB kernel
    readahead: the window's READ before the one the reader waits on, pairs swapped after."""
    order = [MiB, 0]
    at = 2 * MiB
    while at < size:
        order += [at + MiB, at] if at + MiB < size else [at]
        at += 2 * MiB
    return order


def test_a_sequential_readers_reads_out_of_order_stay_one_stream_checked_from_byte_0(tmp_path):
    """The kernel's readahead (4 MiB here) comes in READs that FUSE threads deliver out of order,
    the first one too (1 MiB before 0): still one stream from byte 0, every byte checked (a byte
    changed on the way is EIO at the end), not random reads whose bytes nothing checks."""
    size = 24 * MiB
    store, data, _, item = setup(tmp_path, size)
    bucket = Bucket(store, "bucket")
    prefetcher = Prefetcher(bucket, workers=2, part_layout_of=parts_of(bucket), readahead=4 * MiB)
    state = ReadState()
    got = {at: prefetcher.read(item, state, at, MiB) for at in kernel_order(size)}
    assert b"".join(got[at] for at in sorted(got)) == data
    assert state.verifier is not None and state.verifier.state == VERIFIED
    assert item.kernel_may_keep()  # every byte through its own stream, checked
    assert store.calls["GET"] == 3  # three pieces of 8 MiB, none fetched again
    store.flip_reads = 1
    state = ReadState()
    with pytest.raises(FsError) as failed:
        for at in kernel_order(size):
            prefetcher.read(item, state, at, MiB)
    assert failed.value.errno == errno.EIO and not store.flip_reads


def test_a_handles_first_two_reads_racing_stay_one_stream_checked_from_byte_0(tmp_path):
    """The first READ (0) is waiting on its GET when the kernel's next one (1 MiB) comes: it is
    the same stream's, not a random read that drops the stream (and its check) under the first."""
    size = 24 * MiB
    store, data, _, item = setup(tmp_path, size)
    bucket = Bucket(store, "bucket")
    prefetcher = Prefetcher(bucket, workers=1, part_layout_of=parts_of(bucket), readahead=MiB)
    store.flip_reads = 1  # the first GET, the first reader's: a byte changed on the way
    gets = GatedGets(store)
    state = ReadState()
    decided = threading.Event()
    got: dict[int, bytes | Exception] = {}
    stream, ensure = prefetcher._stream, prefetcher.ensure

    def seen(call):
        def wrapped(*args, **kwargs):
            if threading.current_thread().name == "second":
                decided.set()  # the second read chose its path
            return call(*args, **kwargs)

        return wrapped

    prefetcher._stream, prefetcher.ensure = seen(stream), seen(ensure)

    def read(at: int) -> None:
        try:
            got[at] = prefetcher.read(item, state, at, MiB)
        except Exception as exc:
            got[at] = exc

    first = threading.Thread(target=read, args=(0,))
    second = threading.Thread(target=read, args=(MiB,), name="second")
    first.start()
    try:
        assert gets.wait_for(1)
        second.start()
        assert decided.wait(60)
    finally:
        gets.open()
        first.join()
        second.join()
    assert got[0] == data[:MiB] or isinstance(got[0], FsError)
    with pytest.raises(FsError) as failed:  # the changed byte is found by the end
        for at in range(2 * MiB, size, MiB):
            prefetcher.read(item, state, at, MiB)
    assert failed.value.errno == errno.EIO
