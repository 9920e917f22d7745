"""The staging journal on its own, and the staging cache's use of it (no FUSE, no server)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sqlite3
import threading

import pytest
from fakestore import FakeStore
from test_fs_unit import make_ops, write_file

from s3fs_mount.fs import attrs as A
from s3fs_mount.fs import journal as journal_module
from s3fs_mount.fs.journal import JOURNAL_NAME, StagingJournal
from s3fs_mount.fs.known import FILE_NAME as KNOWN_TABLE
from s3fs_mount.fs.known import KnownVersions
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.fs.staging import StagedRecord
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.errors import S3Error


def failing_put(*args, **kwargs):
    raise S3Error(503, "SlowDown")


def lines_of(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_records_read_back_last_one_wins(tmp_path):
    journal = StagingJournal(str(tmp_path))
    assert journal.open() == {}
    journal.record("a", {"key": "a", "dirty": True})
    journal.record("b", {"key": "b", "dirty": True})
    journal.record("a", {"key": "a", "dirty": True, "size": 3})
    journal.record("b", None)
    journal.record("c", None)  # never recorded: nothing is written for it
    journal.close()
    path = tmp_path / JOURNAL_NAME
    assert [entry["id"] for entry in lines_of(path)] == ["a", "b", "a", "b"]  # one line per change
    assert StagingJournal.read(str(path)) == {"a": {"key": "a", "dirty": True, "size": 3}}


def test_open_keeps_only_the_live_records(tmp_path):
    journal = StagingJournal(str(tmp_path))
    journal.open()
    for i in range(50):
        journal.record("x%d" % i, {"n": i})
        journal.record("x%d" % i, None)
    journal.record("keep", {"n": 1})
    journal.close()
    again = StagingJournal(str(tmp_path))
    assert again.open() == {"keep": {"n": 1}}
    assert lines_of(tmp_path / JOURNAL_NAME) == [{"id": "keep", "state": {"n": 1}}]
    again.record("more", {"n": 2})  # and it appends after the rewrite
    again.close()
    assert StagingJournal.read(str(tmp_path / JOURNAL_NAME)) == {"keep": {"n": 1}, "more": {"n": 2}}


def test_a_torn_last_line_is_skipped(tmp_path, caplog):
    journal = StagingJournal(str(tmp_path))
    journal.open()
    journal.record("a", {"n": 1})
    journal.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'{"id": "b", "state": {"n"')  # a power cut in the middle of a line
    assert StagingJournal(str(tmp_path)).open() == {"a": {"n": 1}}
    assert "skipped 1 unreadable line" in caplog.text


def test_a_growing_journal_is_rewritten_with_its_live_records(tmp_path):
    journal = StagingJournal(str(tmp_path), compact_at=4096)
    journal.open()
    journal.record("live", {"n": 0})
    for i in range(500):
        journal.record("t%d" % i, {"pad": "x" * 50})
        journal.record("t%d" % i, None)
    size = os.path.getsize(tmp_path / JOURNAL_NAME)
    assert size < 2 * 4096, size  # about 100 KiB were written in all
    journal.close()
    assert StagingJournal.read(str(tmp_path / JOURNAL_NAME)) == {"live": {"n": 0}}
    assert not os.path.exists(str(tmp_path / JOURNAL_NAME) + ".tmp")


def test_staged_files_make_no_file_but_their_data(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    root = ops.staging.root
    for i in range(20):
        write_file(ops, "/f%d" % i, b"x" * 100)
    assert len(store.objects) == 20
    # Besides their data: the lock, the journal (and what HEADs told: fs/known.py, SQLite's).
    made = sorted(n for n in os.listdir(root) if not n.startswith(KNOWN_TABLE))
    assert [n for n in made if not n.endswith(".data")] == [".lock", JOURNAL_NAME]
    assert len(made) == 22
    assert StagingJournal.read(os.path.join(root, JOURNAL_NAME)) == {}  # all clean: nothing owed


def test_a_dirty_file_is_recovered_from_its_record(tmp_path, monkeypatch):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = write_file(ops, "/f", b"staged", flush=False)
    with monkeypatch.context() as m:
        m.setattr(store, "put", failing_put)
        with pytest.raises(OSError):
            ops.flush("/f", fh)  # the upload failed: the file stays staged, and its record says so
    ops.staging.close()
    (state,) = StagingJournal.read(os.path.join(ops.staging.root, JOURNAL_NAME)).values()
    assert state["key"] == "f" and state["dirty"]
    assert make_ops(tmp_path, store).recover() == []
    assert store.objects["f"].data == b"staged"


def test_sidecars_of_an_earlier_version_are_recovered(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    root = ops.staging.root
    ops.staging.close()
    with open(os.path.join(root, "abc.data"), "wb") as f:
        f.write(b"left by 0.x")
    state = {"bucket": "bucket", "key": "old", "size": 11, "dirty": True, "metadata": {}, "headers": {}}
    with open(os.path.join(root, "abc.json"), "w") as f:
        json.dump(state, f)
    assert make_ops(tmp_path, store).recover() == []
    assert store.objects["old"].data == b"left by 0.x"
    assert not os.path.exists(os.path.join(root, "abc.json"))


def test_a_file_written_after_its_unlink_leaves_no_record(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = write_file(ops, "/f", b"first", flush=False)
    ops.flush("/f", fh)
    ops.unlink("/f")
    ops.write(None, b"more", 5, fh)  # still open: readable and writable, but gone from S3
    assert StagingJournal.read(os.path.join(ops.staging.root, JOURNAL_NAME)) == {}
    assert ops.read(None, 9, 0, fh) == b"firstmore"
    ops.release(None, fh)
    ops.fsyncdir("/", 0, 0)  # the unlink's delete, batched, is sent
    assert store.objects == {}


def test_after_a_failed_append_the_next_record_rewrites_the_journal(tmp_path, monkeypatch):
    journal = StagingJournal(str(tmp_path))
    journal.open()
    journal.record("a", {"n": 1})
    real_write = os.write

    def half_then_full_disk(fd, data):
        monkeypatch.setattr(journal_module.os, "write", real_write)  # only this once
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", half_then_full_disk)
    with pytest.raises(OSError) as failed:
        journal.record("b", {"n": 2})
    assert failed.value.errno == errno.ENOSPC
    journal.record("c", {"n": 3})  # the torn half line goes with the rewrite
    journal.close()
    assert len(lines_of(tmp_path / JOURNAL_NAME)) == 3  # every line whole
    assert StagingJournal.read(str(tmp_path / JOURNAL_NAME)) == {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}


def test_the_journal_keeps_room_allocated_past_its_end(tmp_path):
    # Records that let an upload finish go in on a disk full of dirty data: the blocks they
    # take were allocated before (fallocate, the file's size kept).
    journal = StagingJournal(str(tmp_path), reserve=64 << 10)
    journal.open()
    path = tmp_path / JOURNAL_NAME
    assert os.path.getsize(path) == 0 and os.stat(path).st_blocks * 512 >= 64 << 10
    for i in range(200):  # about 40 KiB: past half the room, which is then topped up
        journal.record("t%d" % i, {"pad": "x" * 150})
    size = os.path.getsize(path)
    assert size > 32 << 10 and os.stat(path).st_blocks * 512 >= size + (32 << 10)
    journal.close()
    assert len(StagingJournal.read(str(path))) == 200


def test_a_rewrite_on_a_full_disk_appends_instead(tmp_path, monkeypatch):
    journal = StagingJournal(str(tmp_path), compact_at=4096)
    journal.open()
    for i in range(100):
        journal.record("t%d" % i, {"pad": "x" * 50})
        journal.record("t%d" % i, None)
    journal.record("live", {"n": 0})
    real_open = os.open

    def no_room_for_a_new_file(path, flags, mode=0o777):
        if str(path).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(journal_module.os, "open", no_room_for_a_new_file)
    before = os.path.getsize(tmp_path / JOURNAL_NAME)
    for i in range(100):  # each would rewrite the journal; there is no room for that
        journal.record("u%d" % i, {"pad": "y" * 50})
        journal.record("u%d" % i, None)
    assert os.path.getsize(tmp_path / JOURNAL_NAME) > before  # appended to
    journal.record("live", {"n": 1})
    monkeypatch.setattr(journal_module.os, "open", real_open)
    journal.record("other", {"n": 2})  # room again: rewritten
    journal.close()
    assert os.path.getsize(tmp_path / JOURNAL_NAME) < 4096
    assert StagingJournal.read(str(tmp_path / JOURNAL_NAME)) == {"live": {"n": 1}, "other": {"n": 2}}


def test_an_unreadable_sidecar_of_an_earlier_version_keeps_its_data(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    root = ops.staging.root
    ops.staging.close()
    for name, body in (("bad.data", b"who knows"), ("bad.json", b"{not json"), ("clean.data", b"x")):
        with open(os.path.join(root, name), "wb") as f:
            f.write(body)
    assert make_ops(tmp_path, store).recover() == []
    left = sorted(os.listdir(root))
    assert "bad.data" in left and "bad.json" in left  # left as they are, for a person to look at
    assert "clean.data" not in left  # no record: a clean copy, removed


def test_a_staged_record_has_one_serialization_for_save_and_recovery(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = write_file(ops, "/f", b"staged", flush=False)
    item = ops._handle(fh).item
    item.note_digest(0, 6, "MD5:abc")
    item.save()
    ops.staging.close()
    (state,) = StagingJournal.read(os.path.join(ops.staging.root, JOURNAL_NAME)).values()
    record = item.record()
    assert StagedRecord.from_json(state) == record  # what was saved reads back the same
    assert record.digests == {(0, 6): "MD5:abc"} and record.dirty and record.key == "f"
    assert json.loads(json.dumps(record.to_json())) == state
    legacy = StagedRecord.from_json({"bucket": "b", "key": "old", "size": 11, "dirty": True})
    assert (legacy.key, legacy.size, legacy.mtime) == ("old", 11, None)
    assert (legacy.upload_ids, legacy.digests, legacy.present) == ([], {}, [])


def test_bytes_written_over_after_an_upload_recover_as_written(tmp_path):
    """The record forgets a digest a write made untrue, or recovery takes the write for damage.

    An upload records digests of what it sent; the next write (elsewhere) makes the item dirty and
    records them; a later write over those bytes dropped them in memory only, so after a crash the
    data file "changed on disk" and the written file was kept back, never uploaded.
    """
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = write_file(ops, "/f", b"first", flush=False)
    ops.flush("/f", fh)  # uploaded: the digest of bytes 0-4 is noted
    ops.write("/f", b"tail", 100, fh)  # dirty: recorded, with that digest
    ops.write("/f", b"FIRST", 0, fh)  # over bytes 0-4
    ops.staging.close()  # killed
    again = make_ops(tmp_path, store)
    assert again.recover() == []
    assert again.staging.damaged == []
    assert store.objects["f"].data == b"FIRST" + bytes(95) + b"tail"


def prefix_mount(tmp_path, store: FakeStore, prefix: str = "top") -> S3Operations:
    ops = S3Operations(Bucket(store, "bucket"), prefix, MountOptions(cache_dir=str(tmp_path / "cache")))
    ops.uploader.configure_checks("auto")
    ops.namespace.configure_directories()
    return ops


def test_records_of_a_prefix_mount_name_the_key_in_the_bucket(tmp_path, monkeypatch):
    """The mount's keys are relative to its prefix; its records say where in the bucket a file goes."""
    store = FakeStore()
    ops = prefix_mount(tmp_path, store)
    ops.mkdir("/d", 0o755)
    fh = write_file(ops, "/d/f", b"staged", flush=False)
    assert ops._handle(fh).item.key == "d/f"
    with monkeypatch.context() as m:
        m.setattr(store, "put", failing_put)
        with pytest.raises(OSError):
            ops.flush("/d/f", fh)
    ops.staging.close()
    (state,) = StagingJournal.read(os.path.join(ops.staging.root, JOURNAL_NAME)).values()
    assert (state["bucket"], state["key"]) == ("bucket", "top/d/f")
    assert prefix_mount(tmp_path, store).recover() == []
    assert store.objects["top/d/f"].data == b"staged"


def test_a_record_written_before_the_prefix_moved_into_the_bucket_view_recovers(tmp_path):
    """Records of earlier versions hold the bucket and the whole key: they still say where a file goes
    (a record of another prefix, which no mount of this one should have, is left alone)."""
    store = FakeStore()
    ops = prefix_mount(tmp_path, store)
    root = ops.staging.root
    ops.staging.close()
    for name, body in (("abc.data", b"left by 1.x"), ("xyz.data", b"elsewhere")):
        with open(os.path.join(root, name), "wb") as f:
            f.write(body)
    journal = StagingJournal(root)
    journal.open()
    journal.record("abc", {"bucket": "bucket", "key": "top/old", "size": 11, "dirty": True, "etag": "",
                           "metadata": {}, "headers": {}, "upload_ids": []})
    journal.record("xyz", {"bucket": "bucket", "key": "other/x", "size": 9, "dirty": True})
    journal.close()
    assert prefix_mount(tmp_path, store).recover() == []
    assert store.objects["top/old"].data == b"left by 1.x"
    assert "other/x" not in store.objects
    assert set(StagingJournal.read(os.path.join(root, JOURNAL_NAME))) == {"xyz"}


class _FullDisk:
    """An SQLite connection whose every statement fails, as on a full disk."""

    def execute(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


def test_known_versions_given_up_on_a_full_disk_answer_nothing_and_raise_nothing(tmp_path):
    # A lookup first writes what is recorded; that write failing (the cache disk full) gives
    # the table up, and the lookup goes on with nothing found (it asserted: readdir was EIO).
    known = KnownVersions(str(tmp_path), A.Defaults(uid=0, gid=0, umask=0o022))
    known.drop("/a")  # nothing kept yet: nothing queued
    known._db = _FullDisk()  # type: ignore[assignment]
    known._any = True
    known.drop("/a")
    assert known.find(["/a", "/b"]) == {}
    known.drop("/c")
    known.flush()
    known.close()


def test_known_versions_come_back_after_a_full_disk_with_the_drops_missed_meanwhile(tmp_path):
    # The table's write fails (the cache disk full) and it is given up; once it opens again
    # (reopen_after later, at a write), the drops queued meanwhile are applied and records are
    # kept again; more drops missed than max_queued empty it (a record of a version this mount
    # changed must not stand). Before (round 37): off for the rest of the mount.
    defaults = A.Defaults(uid=0, gid=0, umask=0o022)
    known = KnownVersions(str(tmp_path), defaults, quiet=3600.0, max_queued=3, reopen_after=0.0)
    for i in range(3):
        known.record("/d/f%d" % i, _head_answer(i))
    known.flush()
    assert _rows(tmp_path) == 3
    real = known._db
    known._db = _FullDisk()  # type: ignore[assignment]
    known.record("/d/g", _head_answer(3))
    known.drop("/d/f0")
    known.flush()  # fails: given up
    assert known._db is None
    real.close()
    known.drop("/d/f1")  # while off: owed to the table
    known.record("/d/h", _head_answer(4))
    assert set(known.find(["/d/f0", "/d/f1", "/d/f2", "/d/g", "/d/h"])) == {"/d/f2", "/d/h"}
    assert _rows(tmp_path) == 2
    known.record("/d/k", _head_answer(6))
    known.flush()
    known._db.close()
    known._db = _FullDisk()  # type: ignore[assignment]
    known.reopen_after = 3600.0  # (a test's: the drops below are all missed)
    for name in ("/d/f2", "/d/h", "/d/x", "/d/y"):  # more drops than max_queued
        known.drop(name)
        known.flush()
    known.reopen_after = 0.0
    known.record("/d/i", _head_answer(5))
    assert set(known.find(["/d/f2", "/d/h", "/d/k", "/d/i"])) == {"/d/i"}  # emptied, then kept again
    known.close()
    assert _rows(tmp_path) == 1


def _head_answer(i: int) -> A.Attributes:
    """What a HEAD of a file tells (whole, dated): a record for KnownVersions."""
    return A.attributes_from(
        A.posix_metadata(0o100640, 7, 8, 1.6e9), 4096, 1.6e9, A.Defaults(uid=0, gid=0, umask=0o022), "file",
        etag='"%032x"' % i, headers={"content-type": "text/plain"}, storage_class="STANDARD", stored=1.6e9,
    )


def _rows(tmp_path) -> int:
    db = sqlite3.connect(str(tmp_path / KNOWN_TABLE))
    try:
        return int(db.execute("SELECT COUNT(*) FROM versions").fetchone()[0])
    finally:
        db.close()


def test_what_heads_told_is_written_once_the_records_stop_not_during_the_burst(tmp_path):
    """fs/known.py: ls -l of a directory records each HEAD's answer on the readdir's thread; the
    rows are encoded and written once the records stop (or at close), not every 256 records
    while the HEADs go on (~10% of the mount's GIL in ls -l), nor at each listing page's find
    (round 38). Before round 36: 768 of 1,000 rows written during the burst; before round 38:
    the 1,000 written by the find."""
    defaults = A.Defaults(uid=0, gid=0, umask=0o022)
    known = KnownVersions(str(tmp_path), defaults, quiet=3600.0)
    for i in range(1000):
        known.record("/d/f%04d" % i, _head_answer(i))
    assert _rows(tmp_path) == 0
    found = known.find(["/d/f0000", "/d/f0999"])  # a listing reads the queue: writes nothing
    assert _rows(tmp_path) == 0
    assert found["/d/f0999"].mode == 0o100640 and found["/d/f0999"].uid == 7
    known.record("/d/g", _head_answer(1000))
    known.drop("/d/f0000")  # queued in order after the records: the row goes
    assert set(known.find(["/d/f0000", "/d/f0999", "/d/g"])) == {"/d/f0999", "/d/g"}
    assert _rows(tmp_path) == 0
    known.close()  # writes the rest; the writer thread ends
    assert _rows(tmp_path) == 1000
    assert known._writer is not None and not known._writer.is_alive()
    again = KnownVersions(str(tmp_path), defaults, quiet=3600.0)
    assert set(again.find(["/d/f0000", "/d/g"])) == {"/d/g"}
    # What the queue answered is what the row gives back (but when it was asked).
    assert dataclasses.replace(again.find(["/d/f0999"])["/d/f0999"], seen_at=0) == dataclasses.replace(
        found["/d/f0999"], seen_at=0
    )
    again.record("/d/h", _head_answer(1001))
    again.record("/e/i", _head_answer(1002))
    again.drop("/d", tree=True)  # queued after the rows and the record: all of /d goes
    assert set(again.find(["/d/f0999", "/d/g", "/d/h", "/e/i"])) == {"/e/i"}
    assert _rows(tmp_path) == 1000
    again.close()
    assert _rows(tmp_path) == 1


def test_what_heads_told_is_written_by_the_writer_once_quiet_and_at_once_past_the_bound(tmp_path):
    defaults = A.Defaults(uid=0, gid=0, umask=0o022)
    known = KnownVersions(str(tmp_path), defaults, quiet=0.01)
    for i in range(10):
        known.record("/d/f%d" % i, _head_answer(i))
    for _ in range(1000):  # the writer thread writes them with no call of ours (waits up to 10 s)
        if _rows(tmp_path) == 10:
            break
        threading.Event().wait(0.01)
    assert _rows(tmp_path) == 10
    known.close()
    os.makedirs(tmp_path / "b")
    bounded = KnownVersions(str(tmp_path / "b"), defaults, quiet=3600.0, max_queued=100)
    for i in range(99):
        bounded.record("/e/f%d" % i, _head_answer(i))
    assert _rows(tmp_path / "b") == 0
    bounded.record("/e/last", _head_answer(99))  # the 100th queued: written at once
    assert _rows(tmp_path / "b") == 100
    bounded.close()
