"""The staging cache on its own: an item's content, its record, recovery, and the fetch protocol."""

from __future__ import annotations

import os
import threading

import pytest

from s3fs_mount.fs.spares import SPARE_FILES
from s3fs_mount.fs.staging import CLEAN, DIRTY, UPLOADING, StagedFile, StagingCache
from s3fs_mount.s3.checksums import digest_of_bytes
from tests.waiting import eventually

MiB = 1 << 20


def cache_at(tmp_path, capacity: int = 64 * MiB) -> StagingCache:
    return StagingCache(str(tmp_path / "cache"), "bucket", capacity)


def remote_item(cache: StagingCache, key: str = "k", size: int = 100, etag: str = "v1") -> StagedFile:
    """An item that is a clean copy of S3's version ``etag`` (``size`` bytes), none of them local."""
    item, _ = cache.acquire(key)
    item.reset(size, etag, {"x-amz-meta-mode": "33188"}, {"Content-Type": "text/plain"}, 1000.0)
    return item


def wait_until_waiting(item: StagedFile, thread: threading.Thread) -> None:
    """Until ``thread`` waits on the item's lock (or has ended without waiting)."""
    while thread.is_alive() and not item.cond._waiters:  # type: ignore[attr-defined]
        thread.join(0.001)


def test_write_read_truncate_of_an_item(tmp_path):
    cache = cache_at(tmp_path)
    item, created = cache.acquire("f")
    assert created and item.state == CLEAN
    item.write(0, b"hello world")
    assert item.state == DIRTY and item.read(0, 100) == b"hello world"
    item.write(0, b"HE", append=True)  # at the end, whatever the offset
    assert item.read(0, 100) == b"hello worldHE"
    generation = item.view().generation
    item.truncate(5)
    view = item.view()
    assert (view.size, view.dirty) == (5, True) and view.generation > generation
    assert item.read(0, 100) == b"hello"
    item.truncate(8)  # grows with zeros, all local
    assert item.read(0, 100) == b"hello\0\0\0" and item.covers(0, 8) and not item.covers(0, 9)


def test_a_dirty_item_is_saved_and_recovered_with_its_state(tmp_path):
    cache = cache_at(tmp_path)
    item = remote_item(cache)
    item.write(0, b"x" * 100)  # whole, then written: dirty
    item.set_metadata({"x-amz-meta-mode": "33152", "x-amz-meta-mtime": "1234.5"})
    item.note_digest(0, 100, digest_of_bytes("MD5", [b"x" * 100]))
    item.add_upload("up-1")  # recorded at once
    cache.close()
    again = cache_at(tmp_path)
    (found,) = again.recover()
    view = found.view()
    assert (view.key, view.size, view.etag, view.dirty, view.mtime) == ("k", 100, "v1", True, 1234.5)
    assert view.metadata["x-amz-meta-mode"] == "33152"
    assert found.pending_uploads() == ["up-1"]
    assert found.read(0, 100) == b"x" * 100
    assert found.record().digests == item.record().digests and again.damaged == []


def test_an_item_changed_on_disk_since_its_upload_read_it_is_not_recovered(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("f")
    item.write(0, b"x" * 100)
    item.note_digest(0, 100, digest_of_bytes("MD5", [b"x" * 100]))
    item.save()
    cache.close()
    with open(item.data_path, "r+b") as f:
        f.write(b"y")
    again = cache_at(tmp_path)
    assert again.recover() == [] and again.damaged == ["f"]


def test_a_clean_item_leaves_nothing_to_recover(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("f")
    item.write(0, b"data")
    item.begin_upload()
    assert item.state == UPLOADING
    item.end_upload()
    assert item.mark_clean(item.view().generation, "etag-1")
    assert item.view().etag == "etag-1" and item.state == CLEAN
    cache.close()
    assert cache_at(tmp_path).recover() == []


def test_an_item_written_during_its_upload_stays_dirty(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("f")
    item.write(0, b"one")
    generation, replaces = item.begin_upload()
    assert replaces == ""  # a new file: nothing to replace
    item.write(3, b"two")
    item.end_upload()
    assert not item.mark_clean(generation, "etag-1", 3)
    view = item.view()
    assert view.dirty and view.etag == "etag-1" and view.remote_size == 3


def test_claims_hand_each_missing_range_to_one_fetch(tmp_path):
    item = remote_item(cache_at(tmp_path), size=100)
    assert item.claim_missing(0, 50) == [(0, 50)]
    assert item.claim_missing(0, 50, wait=False) == []  # in flight for the first one
    assert item.claim_missing(0, 100, grid=30, wait=False) == [(60, 90), (90, 100)]
    filled = item.fill(0, 50, b"a" * 50, "v1")
    assert filled is not None and filled.written == 50 and not filled.held
    item.unclaim([(0, 50)])
    assert item.claim_missing(0, 50) == []  # present now
    assert item.read(0, 50) == b"a" * 50


def test_a_write_waits_for_a_fetch_of_its_range(tmp_path):
    """The fetch lands first, then the write: the written bytes win, never the fetched ones."""
    item = remote_item(cache_at(tmp_path), size=100)
    claimed = item.claim_missing(0, 100)
    writer = threading.Thread(target=item.write, args=(10, b"WRITTEN"))
    writer.start()
    wait_until_waiting(item, writer)
    item.fill(0, 100, b"f" * 100, "v1")
    item.unclaim(claimed)
    writer.join()
    assert item.read(0, 100) == b"f" * 10 + b"WRITTEN" + b"f" * 83


def test_bytes_of_an_old_version_are_not_filled(tmp_path):
    cache = cache_at(tmp_path)
    item = remote_item(cache, size=10)
    claimed = item.claim_missing(0, 10)
    assert item.fill(0, 10, b"old" * 4, "v0") is None  # fetched of another version
    item.unclaim(claimed)
    assert item.claim_missing(0, 10, wait=False) == [(0, 10)]


def test_a_fill_that_makes_the_object_whole_is_held_for_its_check(tmp_path):
    item = remote_item(cache_at(tmp_path), size=10)
    claimed = item.claim_missing(0, 10)
    filled = item.fill(0, 10, b"0123456789", "v1", hold_whole=True)
    assert filled is not None and filled.held and filled.size == 10
    assert item.remote_gaps(0, 10) == [(0, 10)]  # written, not yet present
    assert item.drop_fetched("v1", filled.generation)  # the check failed
    item.unclaim(claimed)
    claimed = item.claim_missing(0, 10)
    filled = item.fill(0, 10, b"0123456789", "v1", hold_whole=True)
    item.fill_checked(0, 10, "v1")  # the check passed
    item.unclaim(claimed)
    assert item.remote_gaps(0, 10) == [] and item.read(0, 10) == b"0123456789"


def test_a_fetch_check_does_not_drop_bytes_written_since(tmp_path):
    item = remote_item(cache_at(tmp_path), size=10)
    generation = item.view().generation
    item.write(0, b"new")
    assert not item.drop_fetched("v1", generation)
    assert item.read(0, 3) == b"new"


def test_a_short_answer_means_the_object_ends_there(tmp_path):
    item = remote_item(cache_at(tmp_path), size=10)
    claimed = item.claim_missing(0, 10)
    assert item.fill(0, 10, b"abc", "v1").written == 3
    item.unclaim(claimed)
    assert item.read(0, 10) == b"abc" + b"\0" * 7


def test_atime_follows_relatime_and_the_latest_sighting(tmp_path):
    item = remote_item(cache_at(tmp_path))  # mtime 1000
    assert item.accessed(2000.0)  # atime <= mtime: moves, and the item is clean
    assert item.view().atime == 2000.0
    assert not item.accessed(2001.0)  # a day has not passed
    item.saw_atime(1500.0)  # older: ours stays
    assert item.view().atime == 2000.0
    item.saw_atime(3000.0)
    assert item.view().atime == 3000.0


def test_a_removed_item_is_not_saved(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("f")
    item.write(0, b"data")
    cache.forget("f")
    item.write(0, b"more")  # through a handle still open
    cache.close()
    assert cache_at(tmp_path).recover() == []


def test_claimed_ranges_are_missing_and_never_overlap(tmp_path):
    item = remote_item(cache_at(tmp_path), size=64)
    item.write(20, b"w" * 10)  # dirty now; the rest of [0, 64) is still S3's where missing
    first = item.claim_missing(0, 35, grid=7, wait=False)  # on the grid, as readahead asks
    second = item.claim_missing(0, 64, grid=7, wait=False)
    taken = sorted(first + second)
    assert all(e <= s2 for (_, e), (s2, _) in zip(taken, taken[1:], strict=False))
    assert not any(s < 30 and 20 < e for s, e in taken)  # the written bytes are local
    assert sum(e - s for s, e in taken) == 64 - 10
    other = remote_item(cache_at(tmp_path / "2"), size=64)
    assert other.claim_missing(10, 20) == [(10, 20)]
    assert other.claim_missing(0, 64, wait=False) == []  # off the grid, a gap partly claimed waits whole


def test_released_ranges_leave_the_disk_and_are_recorded_first(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("big")
    item.write(0, b"a" * (8 * MiB))
    before = item.local_bytes()
    stream = {"upload_id": "up-1", "parts": [[1, "e1", ""]]}
    assert item.release([(0, 4 * MiB)], stream) == 4 * MiB
    assert item.local_bytes() <= before - 4 * MiB  # punched: the blocks are free
    assert item.released_ranges() == [(0, 4 * MiB)] and not item.covers(0, 1)
    record = cache.journal.read(cache.journal.path)[item.id]  # what a crash would leave
    assert record["released"] == [[0, 4 * MiB]] and record["stream"] == stream
    assert item.read(4 * MiB, 3) == b"aaa"
    cache.close()
    again = cache_at(tmp_path)
    (found,) = again.recover()  # the hole is no damage: its digest-less bytes are the upload's
    assert found.released_ranges() == [(0, 4 * MiB)] and found.recorded_stream() == stream
    assert found.covers(4 * MiB, 8 * MiB) and not found.covers(0, 1)


def test_a_clean_item_releases_nothing_and_an_upload_forgets_what_was_released(tmp_path):
    cache = cache_at(tmp_path)
    item = remote_item(cache, size=MiB)
    assert item.release([(0, MiB)], {"upload_id": "u"}) == 0  # S3 has a clean copy's bytes anyway
    item.write(0, b"b" * MiB)
    item.release([(0, MiB // 2)], {"upload_id": "u"})
    assert item.mark_clean(item.view().generation, "v2", MiB)
    assert item.released_ranges() == [] and item.recorded_stream() == {}
    assert not item.covers(0, MiB // 2) and item.remote_gaps(0, MiB) == [(0, MiB // 2)]  # fetched from v2


def test_an_item_opened_while_eviction_runs_is_not_evicted(tmp_path):
    # Eviction lists its candidates, then drops them one by one: a file opened in between (here,
    # while eviction looks at its size) must keep its descriptor for the new handle.
    cache = cache_at(tmp_path, capacity=1)
    item, _ = cache.acquire("a")
    item.write(0, b"x" * 8192)
    with item.cond:
        item.dirty = False  # as after its upload
    cache.release(item)
    assert cache.get("a") is None  # over capacity: evicted once closed
    item, _ = cache.acquire("b")
    item.write(0, b"y" * 8192)
    with item.cond:
        item.dirty = False
    cache.capacity = 1 << 30
    cache.release(item)
    cache.capacity = 1
    real = item.local_bytes
    reopened = []

    def size_then_reopen():
        if not reopened:
            reopened.append(cache.acquire("b")[0])  # another thread opens it just now
        return real()

    item.local_bytes = size_then_reopen
    cache.evict()
    assert reopened == [item] and cache.get("b") is item and item.fd >= 0
    assert item.read(0, 8192) == b"y" * 8192


def test_a_hole_made_during_an_upload_stays_zeros_after_it(tmp_path):
    # Found by tests/test_model_workload.py (-o writeback): a file truncated and written past its
    # end while its upload ran read the upload's old bytes in the hole once the upload completed.
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("f")
    item.write(0, b"o" * 1000)
    generation, _ = item.begin_upload()
    item.truncate(0)
    item.write(500, b"new")  # [0, 500) is a hole: zeros
    item.end_upload()
    assert not item.mark_clean(generation, "v1", 1000)  # S3 has the 1000 old bytes
    with item.cond:
        assert item.missing(0, 503) == []  # nothing to fetch: S3's version has the old bytes there
    assert item.read(0, 503) == bytes(500) + b"new"


def test_released_ranges_stay_missing_and_holes_local_after_an_upload(tmp_path):
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("big")
    item.write(0, b"a" * MiB)
    item.write(2 * MiB, b"b")  # [MiB, 2 MiB): a hole
    item.release([(0, MiB // 2)], {"upload_id": "u"})
    generation, _ = item.begin_upload()
    item.write(2 * MiB + 1, b"c")
    item.end_upload()
    assert not item.mark_clean(generation, "v2", 2 * MiB + 1)
    with item.cond:
        assert item.missing(0, 2 * MiB + 2) == [(0, MiB // 2)]  # the released bytes are v2's
    assert item.read(MiB, 4) == bytes(4)


def test_the_kernels_pages_of_an_item_written_here_are_its_own_until_another_version_or_a_bad_fetch(tmp_path):
    """An item's bytes written here went through the kernel, into its pages: an open may keep
    those (keep_cache), through its upload too. Not those of a copy of S3's (the checked
    rule decides), nor once another version is followed, nor after fetched bytes failed
    their check (the kernel may hold them)."""
    cache = cache_at(tmp_path)
    item = remote_item(cache)
    assert not item.kernel_pages_written_here()  # S3's bytes: kernel_may_keep's rule
    item.write(0, b"x" * 100)
    assert item.kernel_pages_written_here()
    generation, _ = item.begin_upload()
    assert item.kernel_pages_written_here()
    item.end_upload()
    assert item.mark_clean(generation, "v2", 100)
    assert item.kernel_pages_written_here()  # S3 holds what the kernel's pages hold
    item.reset(5, "v3", {}, {}, 2000.0)  # another client's version, followed
    assert not item.kernel_pages_written_here()
    item.write(0, b"y")
    assert item.kernel_pages_written_here()
    item.drop_fetched("v3")  # bytes fetched of it failed their check
    assert not item.kernel_pages_written_here()


def _file_calls(monkeypatch) -> dict[str, int]:
    """Count the calls that allocate or resize a file: open with O_CREAT, ftruncate (all threads)."""
    counts = {"create": 0, "ftruncate": 0}
    real_open, real_ftruncate = os.open, os.ftruncate

    def counting_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            counts["create"] += 1
        return real_open(path, flags, *args, **kwargs)

    def counting_ftruncate(fd, length):
        counts["ftruncate"] += 1
        return real_ftruncate(fd, length)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "ftruncate", counting_ftruncate)
    return counts


def test_a_new_item_takes_a_data_file_made_ahead_and_truncates_nothing(tmp_path, monkeypatch):
    """A new file's create makes no inode of its own (once recovery has run, spares are made
    ahead by their thread) and no ftruncate of its empty data file: on this machine's ext4 a
    new inode cost 100-350 us of CPU under load (bench/README.md, round 35)."""
    cache = cache_at(tmp_path)
    assert cache.recover() == []
    assert cache._spares.ready() == 0  # none made until a file is
    cache.acquire("first")  # makes its own, and starts the thread that makes spares
    eventually(lambda: cache._spares.ready() == SPARE_FILES, what="the spare files")
    counts = _file_calls(monkeypatch)
    item, created = cache.acquire("new")
    item.reset(0, "", {"x-amz-meta-mode": "33188"}, {}, 1000.0)  # what a create does
    assert created and counts == {"create": 0, "ftruncate": 0}
    item.write(0, b"hello")
    with open(item.data_path, "rb") as f:  # the spare is the item's data file, by its name
        assert f.read() == b"hello"
    names = os.listdir(cache.root)
    assert sum(n.endswith(".spare") for n in names) == SPARE_FILES - 1
    assert item.id + ".data" in names
    other = remote_item(cache, "old", size=10)  # a copy of S3's version: its size is set
    assert counts["ftruncate"] == 2 and os.path.getsize(other.data_path) == 10
    cache.release(item)
    cache.close()  # the spares not taken go; the item's data stays (dirty: recovered next time)
    assert sorted(n for n in os.listdir(cache.root) if n.endswith((".spare", ".data"))) == sorted(
        i.id + ".data" for i in (cache.get("first"), item, other)
    )


def test_spares_a_killed_mount_left_are_removed_and_its_dirty_files_recovered(tmp_path):
    cache = cache_at(tmp_path)
    cache.recover()
    cache.acquire("first")
    eventually(lambda: cache._spares.ready() == SPARE_FILES, what="the spare files")
    item, _ = cache.acquire("k")
    item.reset(0, "", {}, {}, 1000.0)
    item.write(0, b"dirty bytes")
    # Killed: nothing closed, its flock let go (as the kernel does), its spares left behind.
    os.close(cache._lock_fd)
    left = [n for n in os.listdir(cache.root) if n.endswith(".spare")]
    assert len(left) == SPARE_FILES - 1
    again = cache_at(tmp_path)
    (found,) = again.recover()
    assert found.key == "k" and found.read(0, 100) == b"dirty bytes"
    assert not set(left) & set(os.listdir(again.root))
    again.close()
    assert not [n for n in os.listdir(again.root) if n.endswith(".spare")]


def test_appends_alone_are_moved_after_another_version_and_the_kernels_pages_are_not_kept(tmp_path):
    """An item changed by appends alone to its version (appended_to) becomes another version's
    bytes followed by ours (rebase_appends), still dirty, of that version. Any other write, or a
    truncate, ends it. The kernel's pages then hold the old bytes: no open keeps them, even after
    a later write here, until an open has had them dropped."""
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("log")
    item.reset(3, "v1", {"x-amz-meta-mode": "33188"}, {}, 1000.0)
    item.fill(0, 3, b"v1\n", "v1")
    assert item.appended_to("v1") == -1  # clean
    item.write(0, b"a1\n", append=True)
    item.write(0, b"a2\n", append=True)
    assert item.appended_to("v1") == 3 and item.appended_to("v0") == -1
    assert item.rebase_appends("v0", "v2", b"x", {}, {}) is None  # not of that version
    generation = item.rebase_appends("v1", "v2", b"theirs\n", {"x-amz-meta-owner": "them"}, {})
    view = item.view()
    assert generation == view.generation and view.dirty and view.etag == "v2"
    assert (view.size, view.remote_size) == (13, 7) and item.read(0, 100) == b"theirs\na1\na2\n"
    assert item.record().etag == "v2" and item.record().size == 13
    assert view.metadata["x-amz-meta-owner"] == "them" and "x-amz-meta-mode" not in view.metadata
    assert item.appended_to("v2") == 7  # more appends go on after ours
    item.write(0, b"a3\n", append=True)
    assert item.read(0, 100) == b"theirs\na1\na2\na3\n" and item.appended_to("v2") == 7
    assert not item.kernel_pages_written_here()  # its pages hold v1's bytes and ours before them
    item.pages_dropped()
    item.write(0, b"a4\n", append=True)
    assert item.kernel_pages_written_here()
    item.write(0, b"T", append=False)  # another kind of write: no longer appends alone
    assert item.appended_to("v2") == -1
    assert item.rebase_appends("v2", "v3", b"x", {}, {}) is None


ENDS_APPENDS_ALONE = {
    "a write elsewhere": lambda item: item.write(0, b"V", append=False),
    "a truncate": lambda item: item.truncate(5),
    "a metadata change": lambda item: item.set_metadata({"x-amz-meta-mode": "33261"}),
    "a rename's copy": lambda item: item.stored_as("v1-copied"),
    "our upload found after a crash": lambda item: item.landed("v1-ours", {}),
    "another version": lambda item: item.reset(4, "v2", {}, {}, 1000.0),
    "an upload that missed parts": lambda item: item.mark_clean(item.view().generation, "up", changed=True),
}


@pytest.mark.parametrize("change", list(ENDS_APPENDS_ALONE))
def test_every_other_kind_of_change_ends_appends_alone_and_appends_after_an_upload_go_on(tmp_path, change):
    """Appends alone (appended_to) are told from the item's version and generation, which every
    change moves on, not reset by each kind of change: each other kind ends them, more appends
    after any of them do not bring them back, and an upload of some of them (appends made while
    it ran) leaves the rest appends alone to the version it stored."""
    cache = cache_at(tmp_path)
    item, _ = cache.acquire("log")
    item.reset(3, "v1", {}, {}, 1000.0)
    item.fill(0, 3, b"v1\n", "v1")
    item.write(0, b"a1\n", append=True)
    generation = item.view().generation
    item.write(0, b"a2\n", append=True)
    assert item.mark_clean(generation, "v1-up", 6) is False  # a2 came while a1 went up
    assert item.appended_to("v1-up") == 6 and item.appended_to("v1") == -1
    ENDS_APPENDS_ALONE[change](item)
    etag = item.view().etag
    assert item.appended_to(etag) == -1
    item.write(0, b"a3\n", append=True)
    assert item.appended_to(etag) == -1
    assert item.rebase_appends(etag, "v9", b"theirs\n", {}, {}) is None
