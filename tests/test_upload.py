"""The upload unit on its own, on the fake store: whole, in parts, streamed, abandoned, in conflict."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from fakestore import FakeMultipart, FakeStore
from pagecache import resident_bytes
from waiting import eventually

import s3fs_mount.fs.operations as operations_module
import s3fs_mount.fs.upload as upload_module
from s3fs_mount.fs.errors import Conflict
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions, OptionError
from s3fs_mount.fs.staging import ReleasedRange, StagedFile, StagingCache
from s3fs_mount.fs.upload import Uploader
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import body_checksum
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.store import upload_in_parts

MiB = 1 << 20
UPLOAD_LOG = "s3fs_mount.fs.upload"


@pytest.fixture(autouse=True)
def _context(monkeypatch):
    monkeypatch.setattr(operations_module, "fuse_get_context", lambda: (1000, 1000, 1))


def uploader_at(tmp_path, store: FakeStore, capacity: int = 1 << 30) -> tuple[Uploader, StagingCache]:
    cache = StagingCache(str(tmp_path / "cache"), "bucket", capacity)
    uploader = Uploader(Bucket(store, "bucket"), 5 * MiB, 5 * MiB, workers=2, staging=cache)
    uploader.configure_checks(True)  # the fake store honours If-Match / If-None-Match
    return uploader, cache


def write_through(uploader: Uploader, item: StagedFile, data: bytes, offset: int = 0, chunk: int = MiB):
    """Write as S3Operations.write does: the uploader hears of each write (and may stream)."""
    for at in range(offset, offset + len(data), chunk):
        piece = data[at - offset : at - offset + chunk]
        uploader.before_write(item, at, len(piece))
        item.write(at, piece)
        uploader.after_write(item, at, piece)
        uploader.done_writing(item, at, len(piece))


def fail_part(monkeypatch, number: int) -> threading.Event:
    """Part ``number`` of every upload fails; the event is set once one has."""
    real = FakeMultipart.upload_part
    failed = threading.Event()

    def upload_part(self, n, data, checksum=None):
        if n == number:
            failed.set()
            raise S3Error(500, "InternalError", "part %d lost" % n)
        return real(self, n, data, checksum)

    monkeypatch.setattr(FakeMultipart, "upload_part", upload_part)
    return failed


def make_ops(tmp_path, store: FakeStore, cache_size: int = 4 << 30) -> S3Operations:
    opts = MountOptions(cache_dir=str(tmp_path / "ops-cache"), part_size=5 * MiB, multipart_threshold=5 * MiB,
                        cache_size=cache_size)
    ops = S3Operations(Bucket(store, "bucket"), "", opts)
    ops.uploader.configure_checks(opts.conflict_check)
    ops.namespace.configure_directories()
    ops.namespace.load_root()
    return ops


def abandoned(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == UPLOAD_LOG and "upload abandoned" in r.getMessage()]


# -- whole files ---------------------------------------------------------------------------


def test_a_small_file_is_one_put_that_replaces_only_what_it_saw(tmp_path, caplog):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("f")
    item.write(0, b"ours, v1")
    assert uploader.flush(item)
    assert store.objects["f"].data == b"ours, v1" and store.calls["PUT"] == 1
    assert item.view().etag == store.objects["f"].etag and not item.view().dirty
    store.put("f", b"theirs")  # another client, meanwhile
    item.write(0, b"ours, v2")
    with pytest.raises(Conflict) as clash, caplog.at_level(logging.ERROR, UPLOAD_LOG):
        uploader.flush(item)
    assert store.objects["f"].data == b"theirs"  # theirs stays
    assert store.objects[clash.value.saved_as].data == b"ours, v2"  # ours beside it
    assert item.view().key == clash.value.saved_as and cache.get(clash.value.saved_as) is item
    assert any("changed in S3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("check", ["head", "conditional"])
def test_a_new_file_in_parts_does_not_replace_one_another_client_made(tmp_path, check, streamed):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    if check == "head":  # a server that ignores conditions: a HEAD before the completion
        uploader.put_check = uploader.complete_check = "head"
    item, _ = cache.acquire("f")
    if streamed:
        write_through(uploader, item, os.urandom(11 * MiB))
    else:
        item.write(0, b"x" * (6 * MiB))  # the completion carries If-None-Match
    store.put("f", b"theirs")
    with pytest.raises(Conflict):
        uploader.flush(item)
    assert store.objects["f"].data == b"theirs" and not store.uploads


def test_a_large_file_goes_up_through_the_connectors_one_multipart_routine(tmp_path, monkeypatch):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    used = []

    def counted(*args, **kwargs):
        used.append(args[1])
        return upload_in_parts(*args, **kwargs)

    monkeypatch.setattr(upload_module, "upload_in_parts", counted)
    data = os.urandom(12 * MiB)
    item, _ = cache.acquire("big")
    item.write(0, data)  # no uploader told: nothing streamed
    assert uploader.flush(item)
    assert used == ["big"]
    assert store.objects["big"].data == data and store.calls["PUT part"] == 3
    assert not store.uploads and item.pending_uploads() == []
    assert uploader.progress(item) == (len(data), "", 0.0)
    assert item.record().digests  # each part's digest, recorded before it was sent


def test_a_failed_part_aborts_the_upload_and_the_file_stays_staged(tmp_path, monkeypatch):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("big")
    data = os.urandom(12 * MiB)
    item.write(0, data)
    fail_part(monkeypatch, 2)
    with pytest.raises(S3Error):
        uploader.flush(item)
    assert "big" not in store.objects and not store.uploads  # aborted: no part stays behind
    assert item.view().dirty and item.pending_uploads() == []  # the abort went through
    assert "part 2 lost" in uploader.progress(item)[1]
    monkeypatch.undo()
    assert uploader.flush(item)
    assert store.objects["big"].data == data and uploader.progress(item)[1] == ""


def test_the_routine_aborts_when_the_completion_is_refused(tmp_path, monkeypatch):
    aborted = []
    monkeypatch.setattr(FakeMultipart, "abort", lambda mpu: aborted.append(mpu.upload_id) or True)
    store = FakeStore()
    store.put("k", b"there already")
    data = os.urandom(6 * MiB)
    with pytest.raises(S3Error) as refused:
        upload_in_parts(
            Bucket(store, "bucket"),
            "k",
            len(data),
            5 * MiB,
            lambda mpu, n, off, length: mpu.upload_part(n, data[off : off + length]),
            if_none_match=True,
        )
    assert refused.value.precondition_failed
    assert store.objects["k"].data == b"there already"
    assert store.calls["PUT part"] == 2 and aborted == sorted(store.uploads)  # a refused completion left it


# -- streamed while written ----------------------------------------------------------------


def written_from_its_start(tmp_path, store: FakeStore, size: int) -> tuple[Uploader, StagedFile, bytes]:
    """A new file "big" of ``size`` random bytes written through an uploader (5 MiB parts)."""
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("big")
    data = os.urandom(size)
    write_through(uploader, item, data)
    return uploader, item, data


def test_a_file_written_from_its_start_streams_its_parts(tmp_path):
    store = FakeStore()
    uploader, item, data = written_from_its_start(tmp_path, store, 12 * MiB)
    assert item.pending_uploads()  # the stream began while the file was written
    assert uploader.flush(item)
    assert store.objects["big"].data == data and not store.uploads
    assert store.calls["PUT"] == 0 and store.calls["PUT part"] == 3


def test_parts_in_s3_leave_the_page_cache_and_stay_on_disk(tmp_path):
    store = FakeStore()
    uploader, item, data = written_from_its_start(tmp_path, store, 12 * MiB)
    assert resident_bytes(item.data_path, 10 * MiB, 12 * MiB) == 2 * MiB  # the tail: not sent yet
    assert uploader.flush(item)
    assert store.objects["big"].data == data
    # Every part sent was written to disk and dropped from the page cache: the pages go to the
    # next bytes written (new ones cost a large write most of its CPU here).
    assert resident_bytes(item.data_path, 0, 12 * MiB) == 0
    assert item.read(0, 12 * MiB) == data  # from the disk


def test_parts_are_read_into_buffers_used_again_and_let_go_when_idle(tmp_path, monkeypatch):
    store = FakeStore()
    buffers: list[object] = []
    real = FakeMultipart.upload_part

    def upload_part(self, n, data, checksum=None):
        buffers.append(data.obj)  # the part is a view of a buffer, not a fresh copy
        return real(self, n, data, checksum)

    monkeypatch.setattr(FakeMultipart, "upload_part", upload_part)
    uploader, item, data = written_from_its_start(tmp_path, store, 33 * MiB)  # 7 parts, the last 3 MiB
    uploader.buffers.idle = 0.05
    assert uploader.flush(item)
    assert store.objects["big"].data == data  # a buffer used again holds each part's own bytes
    assert len(buffers) == 7 and len({id(b) for b in buffers}) <= 3  # 2 workers
    deadline = time.monotonic() + 30
    while uploader.buffers.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uploader.buffers.held == 0  # none in use for a while: the memory goes back


def crc32_uploader(tmp_path) -> tuple[FakeStore, Uploader, StagingCache]:
    """An uploader whose parts carry CRC32s the (fake) server checks, as SeaweedFS and AWS do."""
    store = FakeStore()
    store.crc32_checks = True
    uploader, cache = uploader_at(tmp_path, store)
    uploader.configure_checksums()
    return store, uploader, cache


def test_parts_of_a_file_written_in_order_go_from_the_staged_file_with_the_crc32s_of_the_writes(tmp_path):
    store, uploader, cache = crc32_uploader(tmp_path)
    item, _ = cache.acquire("big")
    data = os.urandom(12 * MiB + 5)
    write_through(uploader, item, data, chunk=MiB + 3)  # writes across the parts' edges too
    assert uploader.flush(item)
    assert store.objects["big"].data == data
    # The two whole parts: sent by the kernel from the staged file, with the CRC32s made from the
    # writes (the server checked them: a wrong one is refused); the tail, at close, read back.
    assert sorted(store.bodies) == [(1, "FileSpan"), (2, "FileSpan"), (3, "memoryview")]
    (upload,) = store._begun.values()
    crc = {n: body_checksum(data[(n - 1) * 5 * MiB : n * 5 * MiB], "CRC32")[0] for n in (1, 2, 3)}
    assert upload.crc32 == {n: header["x-amz-checksum-crc32"] for n, header in crc.items()}


def test_a_write_over_bytes_already_counted_makes_the_parts_go_read_back(tmp_path):
    store, uploader, cache = crc32_uploader(tmp_path)
    item, _ = cache.acquire("big")
    data = bytearray(os.urandom(12 * MiB))
    write_through(uploader, item, bytes(data[: 3 * MiB]))
    write_through(uploader, item, b"PATCH", offset=MiB)  # before any part was sent: no abandonment
    data[MiB : MiB + 5] = b"PATCH"
    write_through(uploader, item, bytes(data[3 * MiB :]), offset=3 * MiB)
    assert uploader.flush(item)
    assert store.objects["big"].data == bytes(data)
    assert sorted(store.bodies) == [(1, "memoryview"), (2, "memoryview"), (3, "memoryview")]


def test_a_truncate_forgets_the_bytes_counted(tmp_path):
    store, uploader, cache = crc32_uploader(tmp_path)
    item, _ = cache.acquire("big")
    data = os.urandom(4 * MiB)
    write_through(uploader, item, data)
    uploader.abandon(item, "truncated to 0 bytes")
    item.truncate(2 * MiB)  # the 2 MiB written are now zeros past the end: counted, they were wrong
    rest = os.urandom(10 * MiB)
    write_through(uploader, item, rest, offset=4 * MiB)
    assert uploader.flush(item)
    expected = data[: 2 * MiB] + bytes(2 * MiB) + rest
    assert store.objects["big"].data == expected
    assert all(kind != "FileSpan" for _, kind in store.bodies)


def four_mib_in(tmp_path, store: FakeStore, size: int) -> tuple[Uploader, StagedFile, bytearray]:
    """A new file "big" of ``size`` random bytes (returned), its first 4 MiB written: part 1
    (5 MiB) is not yet under way."""
    uploader, cache = uploader_at(tmp_path, store)
    uploader.configure_checksums()
    item, _ = cache.acquire("big")
    data = bytearray(os.urandom(size))
    write_through(uploader, item, bytes(data[: 4 * MiB]))
    return uploader, item, data


def land_on_part(monkeypatch, item: StagedFile, number: int, offset: int, patch: bytes, when: str):
    """Another writer's bytes ``patch`` land at ``offset`` while part ``number`` goes up the first
    time: ``"during"`` its send (read by the server: a CRC32 made from the writes no longer
    holds; a part read back and checksummed already is sent without them), ``"after"`` it (S3
    has the old bytes). Returns an event set once they landed, and the sends of each part."""
    real = FakeMultipart.upload_part
    landed = threading.Event()
    sends: dict[int, int] = {}

    def upload_part(self, n, data, checksum=None):
        sends[n] = sends.get(n, 0) + 1
        if n != number or landed.is_set():
            return real(self, n, data, checksum)
        if when == "during":
            item.write(offset, patch)
            landed.set()
            return real(self, n, data, checksum)
        try:
            return real(self, n, data, checksum)
        finally:
            item.write(offset, patch)
            landed.set()

    monkeypatch.setattr(FakeMultipart, "upload_part", upload_part)
    return landed, sends


@pytest.mark.parametrize("when", ["during", "after"])
@pytest.mark.parametrize("crc32", [False, True], ids=["md5 parts read back", "crc32 parts from the file"])
def test_a_write_that_lands_on_a_part_while_or_after_it_goes_up_makes_it_go_again(
    tmp_path, monkeypatch, caplog, crc32, when
):
    # Two writers: one writes the file in order; the other's write at 100 is let by (part 1 is
    # not yet sent) and lands while part 1 goes up, or just after: S3 must end with its bytes.
    store = FakeStore()
    store.crc32_checks = crc32
    uploader, item, data = four_mib_in(tmp_path, store, 12 * MiB)
    uploader.before_write(item, 100, 5)  # the other writer: part 1 is not under way yet
    landed, sends = land_on_part(monkeypatch, item, 1, 100, b"PATCH", when)
    write_through(uploader, item, bytes(data[4 * MiB :]), offset=4 * MiB)  # part 1 goes up
    assert landed.wait(30)
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        uploader.after_write(item, 100, b"PATCH")
        uploader.done_writing(item, 100, 5)
        data[100:105] = b"PATCH"
        assert uploader.flush(item)
    assert store.objects["big"].data == bytes(data) and not store.uploads
    assert "landed on part(s) 1-1 already under way: sent again" in caplog.text
    assert not abandoned(caplog)  # only that part went again, the stream was kept
    assert sends == {1: 2, 2: 1, 3: 1}
    assert not item.view().dirty


def test_a_close_while_another_write_is_landing_leaves_the_file_dirty(tmp_path, monkeypatch):
    # The other writer's bytes land just after part 1 went up, and a flush (another handle's
    # close) completes the stream before that writer is done: the object may lack its bytes, so
    # the file stays dirty, with no base to stream on from, and the next flush puts them.
    store = FakeStore()
    uploader, item, data = four_mib_in(tmp_path, store, 15 * MiB)
    uploader.before_write(item, 100, 5)
    landed, _ = land_on_part(monkeypatch, item, 1, 100, b"PATCH", "after")
    write_through(uploader, item, bytes(data[4 * MiB :]), offset=4 * MiB)
    assert landed.wait(30)
    data[100:105] = b"PATCH"
    assert not uploader.flush(item)  # S3 has the file as it was before the write: not clean
    assert item.view().dirty
    uploader.after_write(item, 100, b"PATCH")
    uploader.done_writing(item, 100, 5)
    assert uploader.flush(item)
    assert store.objects["big"].data == bytes(data) and not store.uploads


def test_a_part_written_over_at_every_send_goes_a_bounded_number_of_times(tmp_path, monkeypatch):
    # Ten writes at once (pages of a mapping written back) are let by before part 1 goes up, and
    # one lands each time it goes up: the close sends it again a bounded number of times, then
    # completes and leaves the file dirty (S3 may lack the last bytes); once the other writes
    # are done, the next flush puts the newest bytes.
    store = FakeStore()
    uploader, item, data = four_mib_in(tmp_path, store, 12 * MiB)
    waiting = [(4096 * k, b"%05d" % k) for k in range(10)]
    for offset, stamp in waiting:
        uploader.before_write(item, offset, len(stamp))
    real = FakeMultipart.upload_part
    sends = []

    def land(offset, stamp):
        item.write(offset, stamp)
        uploader.after_write(item, offset, stamp)
        uploader.done_writing(item, offset, len(stamp))
        data[offset : offset + len(stamp)] = stamp

    def upload_part(self, n, body, checksum=None):
        etag = real(self, n, body, checksum)
        if n == 1:
            sends.append(n)
            land(*waiting.pop(0))
        return etag

    monkeypatch.setattr(FakeMultipart, "upload_part", upload_part)
    write_through(uploader, item, bytes(data[4 * MiB :]), offset=4 * MiB)
    assert not uploader.flush(item)
    assert len(sends) == 1 + upload_module.RESENDS and item.view().dirty
    monkeypatch.undo()
    while waiting:
        land(*waiting.pop(0))
    assert uploader.flush(item)
    assert store.objects["big"].data == bytes(data) and not store.uploads


def test_a_write_behind_the_stream_abandons_it_and_says_why(tmp_path, caplog):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("big")
    data = bytearray(os.urandom(12 * MiB))
    write_through(uploader, item, bytes(data))
    (streamed,) = item.pending_uploads()
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        write_through(uploader, item, b"PATCH", offset=100)
    (record,) = abandoned(caplog)
    assert record.levelno == logging.INFO
    assert "big" in record.getMessage() and "a write at 100, behind the" in record.getMessage()
    assert streamed not in store.uploads  # aborted at once (a new stream starts from byte 0)
    data[100:105] = b"PATCH"
    assert uploader.flush(item)
    assert store.objects["big"].data == bytes(data)


def test_a_failed_part_abandons_the_stream_with_a_warning_and_uploads_whole(tmp_path, caplog, monkeypatch):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("big")
    data = os.urandom(12 * MiB)
    failed = fail_part(monkeypatch, 1)
    write_through(uploader, item, data)  # part 1 fails in the background
    assert failed.wait(30)  # (undone before the part was sent, it would not fail)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        assert uploader.flush(item)
    (record,) = abandoned(caplog)
    assert record.levelno == logging.WARNING
    assert "big" in record.getMessage() and "part 1 lost" in record.getMessage()
    assert store.objects["big"].data == data and not store.uploads


def test_a_truncate_abandons_the_stream_and_says_why(tmp_path, caplog):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = ops.create("/big", 0o644)
    data = os.urandom(12 * MiB)
    for off in range(0, len(data), MiB):
        ops.write("/big", data[off : off + MiB], off, fh)
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        ops.truncate("/big", 3 * MiB, fh)
    (record,) = abandoned(caplog)
    assert "big" in record.getMessage() and "truncated to %d bytes" % (3 * MiB) in record.getMessage()
    ops.flush("/big", fh)
    ops.release("/big", fh)
    assert store.objects["big"].data == data[: 3 * MiB] and not store.uploads


def test_a_removal_abandons_the_stream_and_says_why(tmp_path, caplog):
    store = FakeStore()
    ops = make_ops(tmp_path, store)
    fh = ops.create("/big", 0o644)
    for off in range(0, 12 * MiB, MiB):
        ops.write("/big", os.urandom(MiB), off, fh)
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        ops.unlink("/big")
    (record,) = abandoned(caplog)
    assert "big" in record.getMessage() and "removed" in record.getMessage()
    ops.release("/big", fh)
    assert "big" not in store.objects and not store.uploads


def test_no_stream_no_abandonment_logged(tmp_path, caplog):
    store = FakeStore()
    uploader, cache = uploader_at(tmp_path, store)
    item, _ = cache.acquire("small")
    write_through(uploader, item, b"tiny")
    with caplog.at_level(logging.DEBUG, UPLOAD_LOG):
        uploader.abandon(item, "truncated to 0 bytes")
    assert abandoned(caplog) == []


# -- streams larger than the cache ---------------------------------------------------------


def write_sampling(uploader: Uploader, cache: StagingCache, item: StagedFile, data: bytes) -> int:
    """write_through a MiB at a time; returns the most the cache held after any write."""
    peak = 0
    for at in range(0, len(data), MiB):
        write_through(uploader, item, data[at : at + MiB], offset=at)
        peak = max(peak, cache.usage())
    return peak


def streamed_past_the_cache(tmp_path, store: FakeStore, size: int = 40 * MiB):
    """A new file of ``size`` random bytes written through an uploader whose cache holds 20 MiB:
    (uploader, cache, item, data)."""
    uploader, cache = uploader_at(tmp_path, store, capacity=20 * MiB)
    if store.crc32_checks:
        uploader.configure_checksums()
    item, _ = cache.acquire("big")
    data = os.urandom(size)
    return uploader, cache, item, data


@pytest.mark.parametrize("crc32", [False, True], ids=["md5 parts read back", "crc32 parts from the file"])
def test_a_stream_larger_than_the_cache_releases_its_sent_parts(tmp_path, crc32):
    store = FakeStore()
    store.crc32_checks = crc32
    uploader, cache, item, data = streamed_past_the_cache(tmp_path, store, 60 * MiB)
    assert write_sampling(uploader, cache, item, data) <= 20 * MiB
    released = item.released_ranges()
    assert released and released[0][0] == 0  # the first parts left the cache, recorded
    assert item.record().released == released and item.record().stream["parts"]
    assert item.read(59 * MiB, MiB) == data[59 * MiB :]  # the tail is local
    assert uploader.flush(item)
    assert store.objects["big"].data == data and not store.uploads
    assert item.released_ranges() == [] and item.record().stream == {}
    from_file = sum(kind == "FileSpan" for _, kind in store.bodies)
    assert from_file == (12 if crc32 else 0)  # all 12 parts of 5 MiB, each sent once it was full


def test_bytes_released_are_never_read_or_written_locally(tmp_path, caplog):
    store = FakeStore()
    uploader, cache, item, data = streamed_past_the_cache(tmp_path, store)
    write_sampling(uploader, cache, item, data)
    (streamed,) = item.pending_uploads()
    assert uploader.checkpoint_needed(item, 0) and not uploader.checkpoint_needed(item, 40 * MiB)
    with pytest.raises(ReleasedRange):
        item.read(0, 10)
    with pytest.raises(ReleasedRange):
        item.write(0, b"x")
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        uploader.abandon(item, "a test")  # would lose the released bytes: refused, logged
    assert streamed in store.uploads and "streamed upload kept" in caplog.text


def test_a_write_behind_released_bytes_completes_the_upload_first(tmp_path):
    store = FakeStore()
    ops = make_ops(tmp_path, store, cache_size=20 * MiB)
    fh = ops.create("/big", 0o644)
    data = bytearray(os.urandom(40 * MiB))
    for off in range(0, len(data), MiB):
        ops.write("/big", bytes(data[off : off + MiB]), off, fh)
    item = ops.staging.get("big")
    assert item.has_released()
    assert ops.read("/big", 4096, 0, fh) == data[:4096]  # a checkpoint: the object holds it so far
    assert store.objects["big"].data == data and not item.has_released()
    ops.write("/big", b"PATCH", 100, fh)
    data[100:105] = b"PATCH"
    ops.write("/big", b"more", len(data), fh)
    data += b"more"
    ops.flush("/big", fh)
    ops.release("/big", fh)
    assert store.objects["big"].data == data and not store.uploads


def test_a_failed_part_of_a_stream_with_released_bytes_is_sent_again(tmp_path, monkeypatch):
    store = FakeStore()
    uploader, cache, item, data = streamed_past_the_cache(tmp_path, store)
    failed = fail_part(monkeypatch, 7)
    write_sampling(uploader, cache, item, data)
    assert failed.wait(30) and item.has_released()
    with pytest.raises(S3Error):
        uploader.flush(item)  # part 7 fails again: kept, never abandoned
    assert item.view().dirty and item.has_released()
    monkeypatch.undo()
    assert uploader.flush(item)
    assert store.objects["big"].data == data and not store.uploads


def test_a_clobbered_stream_with_released_bytes_puts_theirs_aside(tmp_path, caplog):
    store = FakeStore()
    uploader, cache, item, data = streamed_past_the_cache(tmp_path, store)
    write_sampling(uploader, cache, item, data)
    store.put("big", b"theirs")
    with caplog.at_level(logging.ERROR, UPLOAD_LOG):
        assert uploader.flush(item)
    assert store.objects["big"].data == data
    (aside,) = [k for k in store.objects if k.startswith("big.conflict-")]
    assert store.objects[aside].data == b"theirs" and "theirs to big.conflict-" in caplog.text


def ops_past_the_cache(tmp_path, store: FakeStore) -> tuple[S3Operations, int, bytes]:
    """A mount (without FUSE) with a 20 MiB cache, and /big created and written with 40 MiB
    through it, still open: (ops, its handle, the bytes)."""
    ops = make_ops(tmp_path, store, cache_size=20 * MiB)
    fh = ops.create("/big", 0o644)
    data = os.urandom(40 * MiB)
    for off in range(0, len(data), MiB):
        ops.write("/big", data[off : off + MiB], off, fh)
    return ops, fh, data


@pytest.mark.parametrize("completed", [False, True], ids=["mid-write", "after-complete"])
def test_after_a_crash_the_upload_holding_released_bytes_is_finished(tmp_path, completed):
    store = FakeStore()
    ops, fh, data = ops_past_the_cache(tmp_path, store)
    item = ops.staging.get("big")
    released = item.released_ranges()
    assert released
    if completed:  # the upload completed, and the mount was killed before its record said so
        ops.uploader._upload(item, "")
        assert store.objects["big"].data == data
    ops.uploader.pool.shutdown(wait=True)
    ops.staging.close()  # killed: its record and data file stay
    again = make_ops(tmp_path, store, cache_size=20 * MiB)
    assert again.changes.recover() == []
    assert store.objects["big"].data == data and not store.uploads and not again.staging.damaged


def test_a_file_removed_while_open_keeps_its_released_bytes_for_its_handles(tmp_path):
    store = FakeStore()
    ops, fh, data = ops_past_the_cache(tmp_path, store)
    assert ops.staging.get("big").has_released()
    ops.unlink("/big")
    assert ops.read("/big", MiB, 0, fh) == data[:MiB]  # from the staged file: fetched back before the delete
    ops.release("/big", fh)
    ops.changes.deletes.flush("")
    assert "big" not in store.objects and not store.uploads


def test_a_conflict_name_stays_a_name_and_its_key_fits():
    """KEY.conflict-TIMESTAMP, its name cut by whole characters to 255 bytes and the key to the room."""
    suffix = len(".conflict-20260101T000000")
    assert upload_module.conflict_name("d/f", 1024).startswith("d/f.conflict-")
    long = upload_module.conflict_name("d/" + "é" * 127 + "x", 1024)  # a 255-byte name
    assert long.startswith("d/" + "é" * 115 + ".conflict-") and len(long.encode()) == 2 + 255
    deep = "p" * 990 + "/" + "é" * 5  # the key's room, not the name's length, is the limit
    cut = upload_module.conflict_name(deep, 1024)
    assert cut.startswith("p" * 990 + "/éééé.conflict-") and len(cut.encode()) == 1024 == 991 + 8 + suffix
    assert len(upload_module.conflict_name("ab/" + "é" * 20, 40).encode()) <= 40
    taken = {upload_module.conflict_name("d/f", 1024)}  # an earlier conflict of this second, staged
    second = upload_module.conflict_name("d/f", 1024, taken=taken.__contains__)
    assert second not in taken and second.startswith("d/f.conflict-") and second.endswith("-2")
    cut2 = upload_module.conflict_name(deep, 1024, taken=lambda name: not name.endswith("-2"))
    assert cut2.startswith("p" * 990 + "/ééé.conflict-") and len(cut2.encode()) <= 1024  # cut for "-2" too


# -- another client's metadata-only change -------------------------------------------------


def opened_and_written(tmp_path, store: FakeStore, how: str) -> tuple[Uploader, StagedFile, bytes]:
    """Object "f" (mode 0644, user.old) opened as S3Operations.open does, then written: a small
    file (one PUT), a large one (a multipart upload at close) or one rewritten from its start
    (streamed while written)."""
    meta = {"x-amz-meta-mode": "33188", "x-amz-meta-old": "o", "x-amz-meta-mtime": "1700000000"}
    store.put("f", b"v1", meta)
    uploader, cache = uploader_at(tmp_path, store)
    info = store.head("f")
    item, _ = cache.acquire("f", lambda new: new.reset(info.size, info.etag, info.metadata, info.headers, 1))
    data = {"put": b"ours, v2", "whole": b"w" * (6 * MiB), "streamed": os.urandom(11 * MiB)}[how]
    if how == "streamed":
        item.truncate(0)
        write_through(uploader, item, data)
        assert item.pending_uploads()  # streaming
    else:
        item.write(0, data)
    return uploader, item, data


@pytest.mark.parametrize("how", ["put", "whole", "streamed"])
def test_another_clients_metadata_change_is_merged_into_our_upload(tmp_path, caplog, how):
    """Before: their chmod and setfattr (a self-copy: the ETag stays, so If-Match passes) were
    replaced by our upload's metadata, unlogged. Now both changes stand, one line says so."""
    store = FakeStore()
    uploader, item, data = opened_and_written(tmp_path, store, how)
    theirs = {"x-amz-meta-mode": "33261", "x-amz-meta-old": "o", "x-amz-meta-tag": "v",
              "x-amz-meta-mtime": "1700000000"}
    store.copy_object("f", "f", theirs, replace_metadata=True)  # chmod 755 + setfattr user.tag
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        assert uploader.flush(item)
    stored = store.objects["f"]
    assert stored.data == data
    assert stored.metadata["x-amz-meta-tag"] == "v" and stored.metadata["x-amz-meta-mode"] == "33261"
    assert stored.metadata["x-amz-meta-old"] == "o"
    assert item.view().metadata["x-amz-meta-tag"] == "v"  # this mount shows it too
    (line,) = [r.getMessage() for r in caplog.records if "another client changed" in r.getMessage()]
    assert "mode, user.tag" in line and "merged" in line
    store.calls.clear()
    item.write(0, data[:2])  # the next upload: theirs is now the base, nothing more to merge
    caplog.clear()
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        assert uploader.flush(item)
    assert store.objects["f"].metadata["x-amz-meta-tag"] == "v"
    assert "another client" not in caplog.text


def test_both_changing_one_attribute_keeps_ours_and_says_which(tmp_path, caplog):
    store = FakeStore()
    uploader, item, data = opened_and_written(tmp_path, store, "put")
    item.set_metadata({**item.view().metadata, "x-amz-meta-tag": "ours", "x-amz-meta-old": "o2"})
    theirs = {"x-amz-meta-mode": "33188", "x-amz-meta-tag": "theirs"}
    store.copy_object("f", "f", theirs, replace_metadata=True)
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        assert uploader.flush(item)
    meta = store.objects["f"].metadata
    assert meta["x-amz-meta-tag"] == "ours"  # both set it: ours, the later writer
    assert meta["x-amz-meta-old"] == "o2"  # we changed it, they removed it: ours
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "user.old, user.tag" in warned[0].getMessage()
    assert "theirs is lost" in warned[0].getMessage()


def test_their_removal_of_an_attribute_stands(tmp_path):
    store = FakeStore()
    uploader, item, data = opened_and_written(tmp_path, store, "put")
    store.copy_object("f", "f", {"x-amz-meta-mode": "33188"}, replace_metadata=True)  # setfattr -x user.old
    assert uploader.flush(item)
    assert "x-amz-meta-old" not in store.objects["f"].metadata and store.objects["f"].data == data


def test_the_merge_costs_one_head_per_overwrite_and_none_for_a_new_file(tmp_path):
    store = FakeStore()
    uploader, item, data = opened_and_written(tmp_path, store, "put")
    store.calls.clear()
    assert uploader.flush(item)
    assert store.calls["HEAD"] == 1 and store.calls["PUT"] == 1 and not store.calls["COPY"]
    new, _ = uploader.staging.acquire("g")
    new.write(0, b"new")
    store.calls.clear()
    assert uploader.flush(new)
    assert store.calls["HEAD"] == 0 and store.calls["PUT"] == 1


def test_a_data_change_by_them_is_still_a_conflict_found_by_the_head(tmp_path):
    store = FakeStore()
    uploader, item, data = opened_and_written(tmp_path, store, "put")
    store.put("f", b"theirs")
    store.calls.clear()
    with pytest.raises(Conflict):
        uploader.flush(item)
    assert store.objects["f"].data == b"theirs" and store.calls["PUT"] == 1  # ours, at the conflict name


@pytest.mark.parametrize("code", ["ConditionalRequestConflict", "OperationAborted"])
def test_a_409_at_a_conflict_name_takes_the_next_name(tmp_path, monkeypatch, caplog, code):
    """AWS answers a write conditional on the key being free (If-None-Match: *) with 409 while
    another write of that key is under way (ConditionalRequestConflict), or OperationAborted: the
    name is being taken, as with a 412. Ours (a PUT) went nowhere (the 409 was raised: the upload
    failed), and theirs set aside (a CopyObject) too: now each takes the next name (-2)."""
    store = FakeStore()
    real_put, real_copy = store.put, store.copy_object
    refused: list[str] = []

    def busy(name) -> None:
        if ".conflict-" in str(name) and not refused:
            refused.append(str(name))
            raise S3Error(409, code, "A conflicting conditional operation is in progress.")

    def put(name, *args, **kwargs):
        if kwargs.get("if_none_match"):
            busy(name)
        return real_put(name, *args, **kwargs)

    def copy_object(source, destination, *args, **kwargs):
        if kwargs.get("if_none_match"):
            busy(destination)
        return real_copy(source, destination, *args, **kwargs)

    monkeypatch.setattr(store, "put", put)
    monkeypatch.setattr(store, "copy_object", copy_object)
    # One second for the whole test: a conflict name holds the time to the second, and a retry
    # in the next second takes a new stamp, not "-2" (failed so once at load 28).
    monkeypatch.setattr(time, "strftime", lambda fmt, t=None: "20261207T120000")
    # A small file: ours goes to a conflict name.
    uploader, cache = uploader_at(tmp_path, store)
    store.put("f", b"v0")
    item, _ = cache.acquire("f")
    item.reset(2, store.objects["f"].etag, {}, {}, 0.0)
    item.write(0, b"ours")
    store.put("f", b"theirs")
    with pytest.raises(Conflict) as conflict:
        uploader.flush(item)
    assert refused and conflict.value.saved_as.endswith("-2")
    assert store.objects[conflict.value.saved_as].data == b"ours" and store.objects["f"].data == b"theirs"
    # A stream past the cache: theirs goes to a conflict name.
    refused.clear()
    uploader, cache, item, data = streamed_past_the_cache(tmp_path / "big", store)
    write_sampling(uploader, cache, item, data)
    store.put("big", b"theirs")
    with caplog.at_level(logging.INFO, UPLOAD_LOG):
        assert uploader.flush(item)
    assert refused and store.objects["big"].data == data
    (aside,) = [k for k in store.objects if k.startswith("big.conflict-")]
    assert aside.endswith("-2") and store.objects[aside].data == b"theirs"


def test_a_streamed_write_has_upload_parallel_parts_in_flight_not_parallel(tmp_path, monkeypatch):
    """A file streamed while written sends ``upload_parallel`` parts at once (here 4), not
    ``parallel`` (8, the readers' GETs): each can be set for itself (bench/README.md, round 37).
    Parts are held at the store until the writer has queued all it may (twice the parts in
    flight): then exactly 4 are in flight, and never more, to the end."""
    store = FakeStore()
    held = threading.Event()
    lock = threading.Lock()
    counts = {"now": 0, "most": 0}
    real = FakeMultipart.upload_part

    def upload_part(self, number, data, checksum=None):
        with lock:
            counts["now"] += 1
            counts["most"] = max(counts["most"], counts["now"])
        try:
            held.wait(30)
            return real(self, number, data, checksum)
        finally:
            with lock:
                counts["now"] -= 1

    monkeypatch.setattr(FakeMultipart, "upload_part", upload_part)
    opts = MountOptions(
        cache_dir=str(tmp_path / "ops-cache"),
        part_size=5 * MiB,
        multipart_threshold=5 * MiB,
        upload_parallel=4,
    )
    assert opts.parallel == 8
    ops = S3Operations(Bucket(store, "bucket"), "", opts)
    ops.uploader.configure_checks(opts.conflict_check)
    ops.namespace.configure_directories()
    ops.namespace.load_root()
    data = os.urandom(16 * 5 * MiB)
    done: list[bool] = []

    def write() -> None:
        fh = ops.create("/big", 0o644)
        for off in range(0, len(data), MiB):
            ops.write("/big", data[off : off + MiB], off, fh)
        ops.flush("/big", fh)
        ops.release("/big", fh)
        done.append(True)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # The writer has filled 8 parts and waits for a slot: all 8 went to the upload threads.
        eventually(lambda: ops.uploader._slots._value == 0, what="the writer waiting for a part slot")
        eventually(lambda: counts["now"] == 4, what="4 parts in flight")
        assert counts["most"] == 4
    finally:
        held.set()
        writer.join(30)
    assert done and store.objects["big"].data == data and store.calls["PUT part"] == 16
    assert counts["most"] == 4


@pytest.mark.parametrize("option", ["parallel=0", "upload_parallel=0"])
def test_no_requests_in_flight_is_refused_at_mount(option):
    """parallel=0 made a pool of no threads (a ValueError deep in the mount's start); both bounds
    are refused with a sentence naming the option."""
    with pytest.raises(OptionError, match=option + ": at least 1"):
        MountOptions.parse([option])
