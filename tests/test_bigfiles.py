"""Files larger than the cache, through a real mount on a real server (checked with boto3).

A streamed write releases the parts already in S3 from its staged file, so the cache
dir's allocated bytes stay within ``cache_size``; bytes released are in S3 only as
parts, so a read of them, a write behind the stream, or a crash must still give every
byte back (see fs/staging.py, fs/upload.py). Small parts and a small cache keep it quick.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from pagecache import resident_bytes

from s3fs_mount.fs.journal import JOURNAL_NAME, StagingJournal
from s3fs_mount.localserver import _du

MiB = 1 << 20
CACHE = 20 * MiB
OPTIONS = "cache_size=20M,part_size=5M,multipart_threshold=5M"


def allocated(path: str) -> int:
    """Bytes the files under ``path`` take on disk (st_blocks, as du counts)."""
    return _du(Path(path))


class CacheSampler(threading.Thread):
    """The cache dir's allocated bytes, looked at again and again until stopped: every sample kept."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(allocated(self.path))
            self._halt.wait(0.005)

    def __enter__(self) -> CacheSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)
        self.samples.append(allocated(self.path))


def rand(n: int, seed: int) -> bytes:
    return hashlib.shake_256(b"big-%d" % seed).digest(n)


def s3_bytes(boto, bucket: str, key: str) -> bytes:
    return boto.get_object(Bucket=bucket, Key=key)["Body"].read()


def write_all(fd: int, data: bytes, offset: int = 0) -> None:
    for at in range(0, len(data), MiB):
        os.pwrite(fd, data[at : at + MiB], offset + at)


def released_records(cache: str) -> list[dict]:
    """The staged records (of the journal in ``cache``, any depth) that name released ranges."""
    found = []
    for top, _dirs, files in os.walk(cache):
        if JOURNAL_NAME in files:
            states = StagingJournal.read(os.path.join(top, JOURNAL_NAME)).values()
            found += [state for state in states if state.get("released")]
    return found


@pytest.fixture
def big_mount(mount_factory, tmp_path):
    return mount_factory(OPTIONS, cache_dir=str(tmp_path / "cache")).start()


def test_a_write_larger_than_the_cache_keeps_the_cache_within_its_size(big_mount, boto, bucket):
    data = rand(60 * MiB, 1)
    with CacheSampler(big_mount.cache_dir) as sampler:
        with open(os.path.join(big_mount.path, "big.bin"), "wb") as f:
            for at in range(0, len(data), MiB):
                f.write(data[at : at + MiB])
    assert max(sampler.samples) <= CACHE, "the cache held %d bytes" % max(sampler.samples)
    assert s3_bytes(boto, bucket, "big.bin") == data
    assert "needs bytes the cache released" not in big_mount.log()  # no checkpoint: nobody asked


def test_a_streamed_files_parts_leave_the_page_cache_once_in_s3(mount_factory, tmp_path, boto, bucket):
    # 12 MiB: streamed in 5 MiB parts, and small enough to stay in the cache after its close.
    mount = mount_factory("part_size=5M,multipart_threshold=5M", cache_dir=str(tmp_path / "cache")).start()
    data = rand(12 * MiB, 7)
    with open(os.path.join(mount.path, "f.bin"), "wb") as f:
        for at in range(0, len(data), MiB):
            f.write(data[at : at + MiB])
    assert s3_bytes(boto, bucket, "f.bin") == data
    staged = [
        os.path.join(top, n)
        for top, _, names in os.walk(mount.cache_dir)
        for n in names
        if n.endswith(".data")
    ]
    assert [os.path.getsize(p) for p in staged] == [len(data)]
    # Each part, once in S3, was written to the cache's disk and let go by the page cache.
    assert resident_bytes(staged[0], 0, len(data)) == 0
    with open(os.path.join(mount.path, "f.bin"), "rb") as f:
        assert f.read() == data


def test_a_read_of_released_bytes_during_the_write_gets_them(big_mount, boto, bucket):
    data = rand(50 * MiB, 2)
    path = os.path.join(big_mount.path, "big.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data[: 40 * MiB])
        assert released_records(big_mount.cache_dir)  # the first parts left the cache
        with open(path, "rb") as r:
            # The kernel keeps the pages of what was written here (keep_cache): let them go, so
            # that the read comes to the mount, which no longer has those bytes either.
            os.posix_fadvise(r.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert r.read(MiB) == data[:MiB]  # completes the upload so far, then reads it from S3
            r.seek(39 * MiB)
            assert r.read(MiB) == data[39 * MiB : 40 * MiB]
        write_all(fd, data[40 * MiB :], 40 * MiB)
    finally:
        os.close(fd)
    assert s3_bytes(boto, bucket, "big.bin") == data
    assert "a read at 0 needs bytes the cache released" in big_mount.log()


def test_a_write_behind_the_stream_into_released_bytes_is_kept(big_mount, boto, bucket):
    data = bytearray(rand(40 * MiB, 3))
    path = os.path.join(big_mount.path, "big.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, bytes(data))
        assert released_records(big_mount.cache_dir)
        os.pwrite(fd, b"PATCHED", 100)
        data[100:107] = b"PATCHED"
        write_all(fd, b"tail" * 1000, len(data))
        data += b"tail" * 1000
    finally:
        os.close(fd)
    assert s3_bytes(boto, bucket, "big.bin") == bytes(data)
    with open(path, "rb") as f:
        assert f.read() == bytes(data)


def test_kill9_mid_write_larger_than_the_cache_loses_nothing(mount_factory, boto, bucket, tmp_path):
    """Every byte a write() acknowledged before the crash reaches S3 at the next mount: the
    released ones from the parts of the upload the record names, the rest from the staged file."""
    cache = str(tmp_path / "crash-cache")
    m = mount_factory(OPTIONS, cache_dir=cache).start()
    data = rand(40 * MiB, 4)
    fd = os.open(os.path.join(m.path, "big.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    write_all(fd, data)
    (record,) = released_records(cache)
    assert record["stream"]["upload_id"] in record["upload_ids"]
    m.kill()
    try:
        os.close(fd)
    except OSError:
        pass  # the mount is gone
    assert "big.bin" not in [o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", [])]
    again = mount_factory(OPTIONS, cache_dir=cache).start()
    assert s3_bytes(boto, bucket, "big.bin") == data
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with open(os.path.join(again.path, "big.bin"), "rb") as f:
        assert f.read() == data
    assert again.stop() == 0


def test_a_cold_read_larger_than_the_cache_keeps_it_within_its_size(mount_factory, boto, bucket, tmp_path):
    data = rand(60 * MiB, 5)
    boto.put_object(Bucket=bucket, Key="big.bin", Body=data)
    m = mount_factory(OPTIONS, cache_dir=str(tmp_path / "cache")).start()
    with CacheSampler(m.cache_dir) as sampler:
        with open(os.path.join(m.path, "big.bin"), "rb") as f:
            got = b"".join(iter(lambda: f.read(MiB), b""))
    assert got == data
    assert max(sampler.samples) <= CACHE, "the cache held %d bytes" % max(sampler.samples)
