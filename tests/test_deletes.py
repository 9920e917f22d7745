"""Batched deletes (s3fs_mount/fs/deletes.py) on the in-memory store: hidden at once, sent in
DeleteObjects of up to 1,000 keys, in order with later writes of the same names, and recorded
so that a killed mount sends them at its next start. The same through FUSE on SeaweedFS:
tests/test_mount.py (test_rm_rf_*)."""

from __future__ import annotations

import errno
import logging
import os
import threading

import pytest
from fakestore import FakeStore
from test_fs_unit import _context, make_ops, write_file  # noqa: F401 - _context: autouse fixture

from s3fs_mount.fs.deletes import BATCH, MIN_BATCH, PARALLEL, DeleteQueue, shares
from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.fs.journal import StagingJournal

LONG = 3600.0  # a gather window no test waits out: what is sent, a flush sent


def held(tmp_path, store=None):
    """Operations whose deletes wait for a flush (or a settle) to be sent."""
    ops = make_ops(tmp_path, store or FakeStore())
    ops.changes.deletes.window = LONG
    return ops


def files(ops, names, data=b"x"):
    for name in names:
        write_file(ops, name, data)


def names_in(ops, path):
    return sorted(n[0] for n in ops.readdir(path, 0) if isinstance(n, tuple))


def errno_of(fn, *args):
    with pytest.raises(FuseOSError) as info:
        fn(*args)
    return info.value.errno


def test_an_unlinked_name_is_gone_at_once_and_its_delete_sent_in_batches(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o755)
    files(ops, ["/d/%04d" % i for i in range(1200)] + ["/d/keep"])
    names = [n for n in ops.readdir("/d", 0) if isinstance(n, tuple)]
    assert len(names) == 1201
    for i in range(1200):
        ops.unlink("/d/%04d" % i)
    assert errno_of(ops.getattr, "/d/0001") == errno.ENOENT
    listed = [n[0] for n in ops.readdir("/d", 0) if isinstance(n, tuple)]
    assert listed == ["keep"]  # S3 still has them: hidden
    # Once 1,000 wait they go at once, in shares side by side; what comes after waits for the
    # window (or a flush).
    assert store.calls["DELETE"] == 0
    ops.fsyncdir("/d", 0, 0)  # a directory's fsync: its removals reach S3
    # Batches side by side, none over 1,000 keys; no DELETE of one key.
    assert sum(store.delete_batches) == 1200 and max(store.delete_batches) <= 1000
    assert store.calls["DELETE multi"] == len(store.delete_batches) and store.calls["DELETE"] == 0
    assert sorted(store.objects) == ["d/", "d/keep"]
    assert errno_of(ops.getattr, "/d/0001") == errno.ENOENT


def test_the_background_batcher_sends_without_being_asked(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    ops.changes.deletes.window = 0.0
    files(ops, ["/a", "/b"])
    ops.unlink("/a")
    ops.unlink("/b")
    thread = ops.changes.deletes._thread
    assert thread is not None
    with ops.changes.deletes._cond:  # wait until the batcher has answered for both
        ops.changes.deletes._cond.wait_for(lambda: ops.changes.deletes.pending() == 0, 30)
    assert "a" not in store.objects and "b" not in store.objects
    assert store.calls["DELETE"] == 0


def test_a_name_made_again_is_not_deleted_by_its_pending_delete(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/f", "/g", "/other"])
    ops.unlink("/f")
    write_file(ops, "/f", b"new")  # create: the old delete goes first
    ops.unlink("/g")
    ops.rename("/other", "/g")  # rename onto it: likewise
    ops.finish()
    assert store.objects["f"].data == b"new"
    assert store.objects["g"].data == b"x"
    assert "other" not in store.objects


def test_a_delete_answered_before_unlink_returns_does_not_hide_the_name_for_good(tmp_path):
    """The batcher may send a key and have S3's answer the moment it is queued (a loaded machine
    found this: unlink; fsync of the directory; create of the name again; the new file was then
    absent from listings and lookups, and the next open made it again and clashed with itself)."""
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/f", "/g"])
    queue = ops.changes.deletes
    queued = queue.add

    def add_and_answer(key, etag=None):  # the background sender, at its fastest
        queued(key, etag)
        queue.settle(key)

    queue.add = add_and_answer
    ops.unlink("/f")
    assert "f" not in store.objects
    write_file(ops, "/f", b"new")
    assert ops.getattr("/f")["st_size"] == 3
    assert [n[0] for n in ops.readdir("/", 0) if isinstance(n, tuple)] == ["f", "g"]
    ops.namespace.forget("/f")  # its attributes expired: asked again
    assert ops.getattr("/f")["st_size"] == 3
    assert store.objects["f"].data == b"new"


def test_a_directory_made_where_a_file_was_removed_sends_its_delete_first(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o755)
    files(ops, ["/x", "/g"])
    ops.unlink("/x")
    ops.mkdir("/x", 0o755)  # SeaweedFS has no file and directory of one name: the file goes first
    ops.fsyncdir("/", 0, 0)  # its marker goes in the background (fs/newdirs.py): in S3 now
    assert "x" not in store.objects and "x/" in store.objects
    ops.unlink("/g")
    ops.rename("/d", "/g")
    assert sorted(store.objects) == ["g/", "x/"]


def test_rmdir_sends_the_pending_deletes_of_its_directory_first(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o755)
    ops.mkdir("/e", 0o755)
    files(ops, ["/d/1", "/d/2", "/e/1"])
    ops.unlink("/d/1")
    ops.unlink("/d/2")
    ops.unlink("/e/1")
    ops.rmdir("/d")
    assert not [k for k in store.objects if k.startswith("d/")]
    assert "e/1" in store.objects  # another directory's delete still waits for its batch
    ops.finish()
    assert sorted(store.objects) == ["e/"]


def test_rmdir_of_a_directory_rm_emptied_deletes_its_files_and_objects_in_one_request(tmp_path):
    """rm -r: the directory was listed a moment ago and we removed every name since; its files'
    pending deletes, its marker and its holder go in one DeleteObjects, no DELETE after it."""
    store = FakeStore(drops_marker_metadata=True)  # as SeaweedFS: the holder is d_$folder$
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o750)
    files(ops, ["/d/1", "/d/2", "/other"])
    assert names_in(ops, "/d") == ["1", "2"]
    ops.unlink("/d/1")
    ops.unlink("/d/2")
    ops.unlink("/other")
    before = len(store.deleted_keys)
    ops.rmdir("/d")
    assert [sorted(keys) for keys in store.deleted_keys[before:]] == [["d/", "d/1", "d/2", "d_$folder$"]]
    assert store.calls["DELETE"] == 0
    assert sorted(store.objects) == ["other"]  # another directory's delete still waits
    assert errno_of(ops.getattr, "/d") == errno.ENOENT


def test_rmdir_whose_file_s3_keeps_makes_its_directory_again_with_its_mode(tmp_path, caplog):
    """A file S3 refused to delete in rmdir's request stays: so does its directory, with the
    mode it had (its marker and holder PUT again), and rmdir says ENOTEMPTY and why."""
    store = FakeStore(drops_marker_metadata=True)
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o750)
    files(ops, ["/d/locked", "/d/free"])
    assert names_in(ops, "/d") == ["free", "locked"]
    store.refused_deletes["d/locked"] = "AccessDenied"
    ops.unlink("/d/locked")
    ops.unlink("/d/free")
    with caplog.at_level(logging.ERROR):
        assert errno_of(ops.rmdir, "/d") == errno.ENOTEMPTY
    assert "S3 did not delete d/locked (AccessDenied)" in caplog.text
    assert sorted(store.objects) == ["d/", "d/locked", "d_$folder$"]
    assert store.objects["d_$folder$"].metadata["x-amz-meta-mode"] == str(0o40750)
    ops.namespace.forget("/d")
    assert ops.getattr("/d")["st_mode"] == 0o40750
    assert names_in(ops, "/d") == ["locked"]


def test_rmdir_of_a_directory_rm_emptied_where_another_client_put_a_key_since_is_enotempty(tmp_path):
    """rm -r's listing a moment ago had only names we removed since, but another client put a
    key in the directory after it: the LIST after the DeleteObjects sees it; the directory's
    objects are made again with its mode, and rmdir says ENOTEMPTY (round 34's two-mount hunt)."""
    store = FakeStore(drops_marker_metadata=True)
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o750)
    files(ops, ["/d/1"])
    assert names_in(ops, "/d") == ["1"]
    ops.unlink("/d/1")
    store.objects["d/theirs"] = store.objects["d/1"]  # another client's key
    assert errno_of(ops.rmdir, "/d") == errno.ENOTEMPTY
    assert sorted(store.objects) == ["d/", "d/theirs", "d_$folder$"]
    assert store.objects["d_$folder$"].metadata["x-amz-meta-mode"] == str(0o40750)
    assert names_in(ops, "/d") == ["theirs"]


def test_rmdir_of_a_directory_not_listed_lately_asks_s3_whether_it_is_empty(tmp_path):
    """No listing of it a moment ago (another client put a key in it): a LIST says it is not
    empty, and nothing of it is deleted."""
    store = FakeStore(drops_marker_metadata=True)
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o750)
    ops.fsyncdir("/", 0, 0)  # its objects go in the background (fs/newdirs.py): in S3 now
    store.objects["d/theirs"] = store.objects["d/"]  # another client's key
    ops.namespace.forget("/d")  # the listing mkdir left is gone (dir_ttl)
    assert errno_of(ops.rmdir, "/d") == errno.ENOTEMPTY
    assert sorted(store.objects) == ["d/", "d/theirs", "d_$folder$"]
    assert store.deleted_keys == []


def test_a_renamed_directory_does_not_take_its_removed_files_along(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o755)
    files(ops, ["/d/gone", "/d/kept"])
    ops.unlink("/d/gone")
    ops.rename("/d", "/n")
    assert sorted(store.objects) == ["n/", "n/kept"]


def test_a_refused_delete_shows_the_file_again_and_names_it(tmp_path, caplog):
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/locked", "/free"])
    store.refused_deletes["locked"] = "AccessDenied"
    ops.unlink("/locked")
    ops.unlink("/free")
    with caplog.at_level(logging.ERROR):
        assert errno_of(ops.fsyncdir, "/", 0, 0) == errno.EACCES  # the fsync says it, once
    ops.fsyncdir("/", 0, 0)
    assert "could not delete locked (AccessDenied): it is there again" in caplog.text
    assert ops.getattr("/locked")["st_size"] == 1
    assert errno_of(ops.getattr, "/free") == errno.ENOENT
    assert [n[0] for n in ops.readdir("/", 0) if isinstance(n, tuple)] == ["locked"]


def test_an_unlink_deletes_the_version_it_saw_not_one_another_client_put_since(tmp_path, caplog):
    """Another client's version that lands between our lookup and our batch (or just before the
    unlink, within attr_ttl) stays: the delete names the ETag seen; the name shows again."""
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/f", "/g"])
    assert ops.getattr("/f")["st_size"] == 1  # this mount's view: version 1
    store.put("f", b"theirs")  # another client's, after our lookup
    ops.unlink("/f")
    ops.unlink("/g")
    with caplog.at_level(logging.ERROR):
        ops.fsyncdir("/", 0, 0)
    assert store.objects["f"].data == b"theirs" and "g" not in store.objects
    assert "f changed in S3 since this mount saw it" in caplog.text
    assert ops.getattr("/f")["st_size"] == 6
    ops.unlink("/f")  # now seen: deleted
    ops.fsyncdir("/", 0, 0)
    assert "f" not in store.objects


def test_a_killed_mounts_deletes_name_their_versions_at_the_next_start(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/a", "/b"])
    ops.getattr("/a")
    ops.unlink("/a")
    ops.unlink("/b")
    store.put("a", b"theirs")  # after the unlink, before the killed mount sent it
    ops.staging.close()
    ops.changes.deletes._journal.close()
    again = make_ops(tmp_path, store)
    again.start()
    assert sorted(store.objects) == ["a"] and store.objects["a"].data == b"theirs"
    again.finish()


def test_a_failed_batch_stays_pending_and_is_sent_at_unmount(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    files(ops, ["/a"])
    ops.unlink("/a")
    store.buckets["gone"] = store.buckets.pop("bucket")  # every request fails: NoSuchBucket
    with pytest.raises(FuseOSError):
        ops.fsyncdir("/", 0, 0)
    assert errno_of(ops.getattr, "/a") == errno.ENOENT  # still hidden: still pending
    store.buckets["bucket"] = store.buckets.pop("gone")
    ops.finish()
    assert "a" not in store.objects


def test_deletes_a_killed_mount_left_are_sent_at_the_next_start(tmp_path):
    store = FakeStore()
    ops = held(tmp_path, store)
    ops.mkdir("/d", 0o755)
    files(ops, ["/d/%03d" % i for i in range(300)] + ["/d/keep"])
    for i in range(300):
        ops.unlink("/d/%03d" % i)
    journal = os.path.join(ops.staging.root, "deletes.journal")
    assert len(StagingJournal.read(journal)) == 300  # recorded before each unlink returned
    ops.staging.close()  # killed: nothing sent, nothing closed in order
    ops.changes.deletes._journal.close()
    assert len([k for k in store.objects if k.startswith("d/")]) == 302
    again = make_ops(tmp_path, store)
    again.start()
    assert sorted(store.objects) == ["d/", "d/keep"]
    assert StagingJournal.read(journal) == {}
    assert sum(store.delete_batches) == 300 and len(store.delete_batches) <= PARALLEL
    assert store.calls["DELETE"] == 0
    again.finish()


class GatedStore:
    """A store whose DeleteObjects each wait until the test lets them answer."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.batches: list[list[str]] = []  # keys of each delete_keys call, in the order they came
        self.answered = 0  # how many of them may answer (the first ``answered``)

    def delete_keys(self, keys, etags=None):
        with self.cond:
            self.batches.append(list(keys))
            mine = len(self.batches)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.answered >= mine)
        return []

    def wait_for_batches(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.batches) >= n, 30), self.batches

    def answer(self, n: int) -> None:
        with self.cond:
            self.answered = n
            self.cond.notify_all()


def added_at_once(queue: DeleteQueue, keys: list[str]) -> None:
    """``keys`` added as one burst: the background sender sees all of them or none."""
    with queue._cond:  # reentrant: add() takes it too
        for key in keys:
            queue.add(key)


def under_way(queue: DeleteQueue) -> int:
    with queue._cond:
        return len(queue._sending)


def test_keys_that_come_while_a_batch_is_under_way_go_beside_it_in_shares(tmp_path):
    """rm -rf unlinks faster than S3 deletes: what gathers while a batch is under way goes at
    once beside it, a share to each free slot (up to PARALLEL under way), not held until it is
    answered (round 32's rule: a quiet rm -rf of 1,000 files waited on two batches in turn)."""
    store = GatedStore()
    queue = DeleteQueue(store, str(tmp_path), lambda deleted, failed: None, window=0.0)
    try:
        queue.add("first")
        store.wait_for_batches(1)  # under way until answered
        keys = ["k%03d" % i for i in range(400)]
        added_at_once(queue, keys)
        store.wait_for_batches(PARALLEL)  # the first still unanswered
        assert store.batches[1:] == [keys[0:100], keys[100:200], keys[200:300]]
        assert queue.pending() == 401 and under_way(queue) == 301  # the last 100 wait for a slot
        store.answer(1)  # a slot frees: a share of what waits goes in it
        store.wait_for_batches(PARALLEL + 1)
        assert store.batches[PARALLEL] == keys[300:350]
        store.answer(10**6)
        queue.flush()
        assert [k for batch in store.batches[1:] for k in batch] == keys and queue.pending() == 0
    finally:
        store.answer(10**6)
        queue.close()


def test_many_keys_waiting_go_in_full_batches_side_by_side(tmp_path):
    """4,000 keys or more waiting (a long rm -rf, the server behind) go in batches of 1,000 (S3's
    most), up to PARALLEL under way: not cut into more, smaller requests."""
    store = GatedStore()
    queue = DeleteQueue(store, str(tmp_path), lambda deleted, failed: None, window=0.0)
    try:
        queue.add("first")
        store.wait_for_batches(1)
        keys = ["k%04d" % i for i in range(4 * BATCH)]
        added_at_once(queue, keys)
        store.wait_for_batches(PARALLEL)  # the first still unanswered
        assert store.batches[1:] == [keys[0:BATCH], keys[BATCH : 2 * BATCH], keys[2 * BATCH : 3 * BATCH]]
        store.answer(10**6)
        queue.flush()
        sent = [k for batch in store.batches[1:] for k in batch]
        assert sorted(sent) == keys and queue.pending() == 0
    finally:
        store.answer(10**6)
        queue.close()


def test_a_flush_sends_its_keys_in_shares_side_by_side(tmp_path):
    """fsync of a directory (and recovery, unmount) with 400 deletes waiting: four DeleteObjects
    of 100 at once, not one of 400 (SeaweedFS deletes one request's keys one after the other)."""
    store = GatedStore()
    queue = DeleteQueue(store, str(tmp_path), lambda deleted, failed: None, window=LONG)
    keys = ["d/k%03d" % i for i in range(400)]
    try:
        for key in keys:
            queue.add(key)
        flushing = threading.Thread(target=queue.flush, args=("d/",))
        flushing.start()
        store.wait_for_batches(PARALLEL)  # none answered: all four under way at once
        assert sorted(store.batches) == [keys[0:100], keys[100:200], keys[200:300], keys[300:400]]
        store.answer(10**6)
        flushing.join(30)
        assert not flushing.is_alive() and queue.pending() == 0
    finally:
        store.answer(10**6)
        queue.close()


def test_rmdir_of_a_large_directory_sends_its_files_in_shares_then_its_objects(tmp_path):
    """rmdir after rm's unlinks of 400 files (flush_with): the files go in four DeleteObjects at
    once, and the directory's marker and holder once all four are answered (SeaweedFS keeps
    directories: the marker goes after the files), not the 400 and the marker in one request
    that the server deletes key after key."""
    store = GatedStore()
    queue = DeleteQueue(store, str(tmp_path), lambda deleted, failed: None, window=LONG)
    keys = ["d/k%03d" % i for i in range(400)]
    got: list = []
    try:
        for key in keys:
            queue.add(key)
        rmdir = threading.Thread(target=lambda: got.append(queue.flush_with("d/", ["d/", "d_$folder$"])))
        rmdir.start()
        store.wait_for_batches(PARALLEL)  # none answered: all four under way at once
        assert sorted(store.batches) == [keys[0:100], keys[100:200], keys[200:300], keys[300:400]]
        store.answer(PARALLEL - 1)
        with store.cond:  # the directory's objects wait for the last of the files' batches
            assert not store.cond.wait_for(lambda: len(store.batches) > PARALLEL, 0.2)
        store.answer(10**6)
        rmdir.join(30)
        assert not rmdir.is_alive() and got == [[]]
        assert [sorted(batch) for batch in store.batches[PARALLEL:]] == [["d/", "d_$folder$"]]
        assert queue.pending() == 0
    finally:
        store.answer(10**6)
        queue.close()


def test_a_few_keys_go_in_one_batch(tmp_path):
    """Fewer than 2 x MIN_BATCH keys are one request, by the background or a flush: a directory
    of rm -r's tree (six files) is one DeleteObjects, not six."""
    store = GatedStore()
    store.answer(10**6)
    queue = DeleteQueue(store, str(tmp_path), lambda deleted, failed: None, window=LONG)
    try:
        keys = ["d/%02d" % i for i in range(2 * MIN_BATCH - 1)]
        for key in keys:
            queue.add(key)
        queue.flush("d/")
        assert store.batches == [keys]
    finally:
        queue.close()


def test_shares_are_even_at_least_min_batch_and_at_most_batch():
    def sizes(n):
        return [len(batch) for batch in shares(["k%d" % i for i in range(n)])]

    assert sizes(1) == [1] and sizes(6) == [6] and sizes(2 * MIN_BATCH - 1) == [2 * MIN_BATCH - 1]
    assert sizes(2 * MIN_BATCH) == [MIN_BATCH, MIN_BATCH]
    assert sizes(1000) == [250] * PARALLEL
    assert sizes(4 * BATCH) == [BATCH] * 4
    assert sizes(4 * BATCH + 8) == [802] * 4 + [800]  # five, none over BATCH
