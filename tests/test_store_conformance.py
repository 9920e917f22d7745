"""One set of tests for every ObjectStore: the fake, and the connector on SeaweedFS and on moto.

The filesystem's unit tests run on tests/fakestore.py; these keep that fake
honest. Each test runs through a :class:`~s3fs_mount.s3.bucket.Bucket` (what
the filesystem uses) over each store, with and without a key prefix, and
covers what fs/ asks of S3: put, get (ranges, blocks, conditions), head, list
with a delimiter and by pages, copy with metadata REPLACE, delete, bulk
delete, multipart (parts, copied parts, complete, abort), and buckets.
Where servers differ on purpose, the store's own probe says which way it
goes and the test holds it to that. Where an emulator falls short of S3,
its ``quirks`` name the check it is spared, so the gap stays written down.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import s3rig
from fakestore import FakeStore

from s3fs_mount.s3 import store as store_module
from s3fs_mount.s3.bucket import Bucket, ObjectStore
from s3fs_mount.s3.checksums import composite
from s3fs_mount.s3.connection import S3Connection
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.names import S3Name
from s3fs_mount.s3.parts import PartLayout
from s3fs_mount.s3.store import RemoteStore

MiB = 1 << 20

#: What moto (5.x) does not do as S3 does: it copies whatever ``x-amz-copy-source-if-match``
#: or ``If-None-Match`` says, and answers 500 to the completion of an aborted upload.
MOTO_QUIRKS = frozenset({"copy ignores if-match", "copy ignores if-none-match", "complete after abort"})


@dataclass
class Subject:
    """A store under test, one fresh bucket of it, and the view the tests use."""

    store: ObjectStore
    name: str  # the bucket
    view: Bucket
    quirks: frozenset[str] = frozenset()
    renames: bool = False  # the server has RenameObject (SeaweedFS 4; not moto 5)
    keeps_directories: bool = False  # an emptied directory stays until its dir/ goes (SeaweedFS)

    def raw(self, key: str) -> S3Name:
        """Where ``key`` of the view really is."""
        return S3Name(self.view.prefix + key, self.name)


def _real(server_endpoint: str, access_key: str, secret_key: str, hint: str
          ) -> Iterator[tuple[RemoteStore, str]]:
    connection = S3Connection(
        endpoint=server_endpoint, access_key_id=access_key, secret_access_key=secret_key, tls=False
    )
    store = RemoteStore(connection, part_size=5 * MiB, multipart_threshold=5 * MiB)
    name = s3rig.unique_bucket_name(hint)
    store.create_bucket(name)
    try:
        yield store, name
    finally:
        for key, upload_id in store.list_multipart_uploads(bucket=name):
            store.abort_multipart(key, upload_id, bucket=name)
        store.delete_keys([e.key for e in store.list_all(bucket=name)], bucket=name)
        try:
            store.delete_bucket(name)
        except S3Error:
            pass  # SeaweedFS may still list a directory for a moment: the server goes at session end
        store.close()


@pytest.fixture(
    params=["fake", "fake/prefix", "fake-as-seaweedfs", "seaweedfs", "seaweedfs/prefix", "moto"],
)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    kind, _, prefixed = request.param.partition("/")
    prefix = "pre fix/" if prefixed else ""
    if kind.startswith("fake"):
        as_seaweedfs = kind == "fake-as-seaweedfs"
        store = FakeStore(
            "conformance", drops_marker_metadata=as_seaweedfs, default_bucket="", renames=as_seaweedfs,
            backslash_is_slash=as_seaweedfs, keeps_directories=as_seaweedfs,
        )
        yield Subject(store, "conformance", Bucket(store, "conformance", prefix), renames=as_seaweedfs,
                      keeps_directories=as_seaweedfs)
        return
    server = request.getfixturevalue("s3server" if kind == "seaweedfs" else "moto_server")
    for store, name in _real(server.endpoint, server.access_key, server.secret_key, "conformance"):
        quirks = MOTO_QUIRKS if kind == "moto" else frozenset()
        seaweedfs = kind == "seaweedfs"
        yield Subject(
            store, name, Bucket(store, name, prefix), quirks, seaweedfs, keeps_directories=seaweedfs
        )


def keys_of(pages) -> tuple[list[str], list[str]]:
    entries, prefixes = [], []
    for page in pages:
        entries.extend(e.key for e in page.entries)
        prefixes.extend(page.prefixes)
    return entries, prefixes


# -- objects --------------------------------------------------------------------------------


def test_put_head_and_ranged_gets(subject):
    b = subject.view
    data = os.urandom(300_000)
    etag = b.put("dir/obj ü+%.bin", data, {"Content-Type": "text/x-test", "x-amz-meta-colour": "blue"})
    assert etag == hashlib.md5(data).hexdigest()  # one PUT: the MD5
    info = b.head("dir/obj ü+%.bin")
    assert (info.key, info.size, info.etag) == ("dir/obj ü+%.bin", len(data), etag)
    assert info.metadata == {"x-amz-meta-colour": "blue"}
    assert info.headers["Content-Type"] == "text/x-test"
    assert info.mtime > 0
    assert subject.store.head(subject.raw("dir/obj ü+%.bin")).etag == etag  # the prefix is real
    assert b.get_range("dir/obj ü+%.bin", 1000, 5000) == data[1000:6000]
    assert b.get_range("dir/obj ü+%.bin", len(data) - 10, 100) == data[-10:]  # fewer at the end
    assert b.get_range("dir/obj ü+%.bin", len(data), 100) == b""  # at the end: nothing
    assert b.get_range("dir/obj ü+%.bin", 0, 0) == b""
    blocks = b.get_range_blocks("dir/obj ü+%.bin", 7, 250_000, 65536)
    assert [len(x) for x in blocks[:-1]] == [65536] * (len(blocks) - 1)
    assert b"".join(blocks) == data[7:250_007]


def test_an_empty_object_and_a_marker(subject):
    b = subject.view
    assert b.put("empty", b"") == hashlib.md5(b"").hexdigest()
    assert b.head("empty").size == 0
    assert b.get_range("empty", 0, 10) == b""
    b.put("dir/", b"", {"Content-Type": "application/x-directory", "x-amz-meta-mode": "16877"})
    kept = b.probe_marker_metadata()
    assert b.head("dir/").metadata == ({"x-amz-meta-mode": "16877"} if kept else {})


def test_a_key_with_a_backslash_is_where_the_probe_says(subject):
    b = subject.view
    kept = b.probe_backslash_keys()
    assert kept == (not subject.renames)  # SeaweedFS stores '\\' as '/'; S3 and moto keep it
    assert list(b.list_all()) == []  # the probe leaves nothing
    b.put("a\\b", b"1")
    assert [e.key for e in b.list_all()] == ["a\\b" if kept else "a/b"]
    assert b.get_range("a\\b", 0, 1) == b"1"  # either way, the name it was written by reads it


def test_a_missing_key_is_not_found(subject):
    b = subject.view
    with pytest.raises(S3Error) as missing:
        b.head("nothing")
    assert (missing.value.status, missing.value.code) == (404, "NotFound")  # a HEAD has no body to say more
    with pytest.raises(S3Error) as missing:
        b.get_range("nothing", 0, 10)
    assert (missing.value.status, missing.value.code) == (404, "NoSuchKey")
    b.remove("nothing")  # deleting a missing key succeeds, as in S3


def test_reads_conditional_on_the_version(subject):
    b = subject.view
    first = b.put("f", b"one")
    assert b.get_range("f", 0, 3, if_match=first) == b"one"
    b.put("f", b"two")
    with pytest.raises(S3Error) as changed:
        b.get_range("f", 0, 3, if_match=first)
    assert changed.value.precondition_failed


def test_conditional_writes_as_the_probe_says(subject):
    b = subject.view
    on_put, on_complete = b.probe_conditional_writes()
    first = b.put("f", b"1")
    if on_put:
        with pytest.raises(S3Error) as exists:
            b.put("f", b"2", if_none_match=True)
        assert exists.value.precondition_failed
        with pytest.raises(S3Error) as other:
            b.put("f", b"3", if_match="0" * 32)
        assert other.value.precondition_failed
        assert b.get_range("f", 0, 1) == b"1"
        assert b.put("f", b"4", if_match=first) == hashlib.md5(b"4").hexdigest()
        assert b.put("new", b"5", if_none_match=True)
    else:
        b.put("f", b"2", if_none_match=True)
        assert b.get_range("f", 0, 1) == b"2"
    mpu = b.start_multipart("f")
    try:
        mpu.upload_part(1, b"6")
        if on_complete:
            with pytest.raises(S3Error) as exists:
                mpu.complete(if_none_match=True)
            assert exists.value.precondition_failed
        else:
            mpu.complete(if_none_match=True)
            assert b.get_range("f", 0, 1) == b"6"
    finally:
        mpu.abort()


def test_copy_keeps_or_replaces_metadata(subject):
    b = subject.view
    etag = b.put("src", b"body", {"Content-Type": "text/plain", "x-amz-meta-a": "1", "x-amz-meta-b": "2"})
    b.copy_object("src", "kept", size=4)
    kept = b.head("kept")
    assert kept.metadata == {"x-amz-meta-a": "1", "x-amz-meta-b": "2"}
    assert kept.headers["Content-Type"] == "text/plain" and kept.etag == etag
    new = b.copy_object("src", "src", {"x-amz-meta-c": "3"}, replace_metadata=True, if_match=etag)
    info = b.head("src")
    assert info.metadata == {"x-amz-meta-c": "3"}  # exactly those: a and b are gone
    assert info.headers["Content-Type"] == "text/plain"  # the content headers stay
    assert info.etag == new == etag  # the same bytes
    assert b.get_range("src", 0, 10) == b"body"
    if "copy ignores if-match" not in subject.quirks:
        with pytest.raises(S3Error) as changed:
            b.copy_object("src", "other", if_match="0" * 32)
        assert changed.value.precondition_failed
        with pytest.raises(S3Error) as missing:
            b.head("other")
        assert missing.value.not_found
    with pytest.raises(S3Error) as gone:
        b.copy_object("missing", "other", size=1)
    assert gone.value.not_found


def test_a_copy_with_if_none_match_lands_only_on_a_free_name(subject):
    # The uploader copies another client's version aside to a conflict name: never over an
    # object already there (another mount's conflict copy of the same second).
    b = subject.view
    b.put("src", b"theirs")
    b.put("taken", b"kept")
    b.copy_object("src", "free", size=6, if_none_match=True)
    assert b.get_range("free", 0, 10) == b"theirs"
    if "copy ignores if-none-match" not in subject.quirks:
        with pytest.raises(S3Error) as exists:
            b.copy_object("src", "taken", size=6, if_none_match=True)
        assert exists.value.precondition_failed
        assert b.get_range("taken", 0, 10) == b"kept"


# The real stores only: the fake copies whole whatever the size.
@pytest.mark.parametrize("subject", ["seaweedfs", "seaweedfs/prefix", "moto"], indirect=True)
def test_a_copy_in_parts_is_conditional_and_tells_its_upload_and_etag_before_completing(
    subject, monkeypatch
):
    # Over 5 GiB a copy goes in parts (lowered here to 5 MiB): each part only from the version
    # if_match names, and on_parts tells the upload (to abort after a crash) and the ETag the
    # completion makes (to recognise it after a crash), before the completion.
    monkeypatch.setattr(store_module, "MAX_SINGLE_COPY", 5 * MiB)
    monkeypatch.setattr(store_module, "COPY_PART", 5 * MiB)
    subject.store.configure_checksums(subject.name)  # as a mount does: SeaweedFS then gives MD5 ETags
    b = subject.view
    data = os.urandom(11 * MiB + 3)
    etag = b.put("src", data, {"x-amz-meta-a": "1"})
    told: list[tuple[str, bool, str]] = []
    new = b.copy_object("src", "dst", on_parts=lambda mpu, copied: told.append(
        (mpu.upload_id, copied, mpu.expected_etag() if copied else "")), if_match=etag)
    assert [c for _, c, _ in told] == [False, True] and told[0][0] == told[1][0]
    assert new == b.head("dst").etag == told[1][2] and new.endswith("-3")
    assert hashlib.md5(b.get_range("dst", 0, len(data) + 1)).digest() == hashlib.md5(data).digest()
    assert b.head("dst").metadata == {"x-amz-meta-a": "1"}
    if "copy ignores if-match" not in subject.quirks:
        with pytest.raises(S3Error) as changed:
            b.copy_object("src", "other", if_match="0" * 32)
        assert changed.value.precondition_failed
        with pytest.raises(S3Error) as missing:
            b.head("other")
        assert missing.value.not_found
    if "copy ignores if-none-match" not in subject.quirks:  # its completion is conditional too
        with pytest.raises(S3Error) as exists:
            b.copy_object("src", "dst", if_none_match=True)
        assert exists.value.precondition_failed
    assert subject.store.list_multipart_uploads(bucket=subject.name) == []  # the refused one aborted


def test_rename_object_as_the_probe_says(subject):
    b = subject.view
    assert b.probe_rename_object() == subject.renames  # moto takes it for a PUT of nothing: found out
    assert [e.key for e in b.list_all()] == []  # the probe left nothing
    if not subject.renames:
        return
    etag = b.put("d/src", b"body", {"Content-Type": "text/plain", "x-amz-meta-mode": "33188"})
    b.put("d/dst", b"older")
    with pytest.raises(S3Error) as changed:
        b.rename_object("d/src", "d/dst", if_match="0" * 32)
    assert changed.value.precondition_failed
    assert b.get_range("d/dst", 0, 10) == b"older" and b.head("d/src").etag == etag  # nothing moved
    b.rename_object("d/src", "d/dst", if_match=etag)  # onto an existing name: replaced
    moved = b.head("d/dst")
    assert (moved.etag, moved.size, moved.metadata) == (etag, 4, {"x-amz-meta-mode": "33188"})
    assert moved.headers["Content-Type"] == "text/plain"
    assert b.get_range("d/dst", 0, 10) == b"body"
    with pytest.raises(S3Error) as gone:
        b.head("d/src")
    assert gone.value.not_found
    b.rename_object("d/dst", "other dir/a+b é")  # into another directory, a name to encode
    assert b.get_range("other dir/a+b é", 0, 10) == b"body"
    assert [e.key for e in b.list_all()] == ["other dir/a+b é"]
    with pytest.raises(S3Error) as missing:
        b.rename_object("d/missing", "d/x")
    assert missing.value.not_found


def test_delete_and_bulk_delete(subject):
    b = subject.view
    for key in ("a", "d/1", "d/2", "d/e/3", "keep"):
        b.put(key, b"x")
    b.remove("a")
    assert b.delete_keys(["d/1", "d/2", "d/e/3", "never-was"]) == []
    assert keys_of(b.list("", delimiter=None)) == (["keep"], [])


def test_bulk_delete_of_a_named_version_keeps_another(subject):
    """DeleteObjects with an ETag deletes that version only: another client's stays."""
    b = subject.view
    seen = b.put("mine", b"v1")
    b.put("theirs", b"v1")
    old = b.put("changed", b"v1")
    b.put("changed", b"v2, another client's")
    assert b.delete_keys(["mine", "changed", "theirs"], etags={"mine": seen, "changed": old}) == [
        ("changed", "PreconditionFailed")]
    assert keys_of(b.list("", delimiter=None)) == (["changed"], [])


def test_a_directory_whose_keys_all_went(subject):
    """SeaweedFS keeps it (listed with a delimiter, its own dir/ in a listing of it, not in a
    listing of the keys beginning with its name, nor in one with no delimiter) until its dir/
    is deleted; S3 and moto keep nothing."""
    b = subject.view
    for key in ("e/d/f", "e/g"):
        b.put(key, b"x")
    b.remove("e/d/f")
    kept = subject.keeps_directories
    assert keys_of(b.list("e/")) == (["e/g"], ["e/d/"] if kept else [])
    assert keys_of(b.list("e/d")) == ([], [])
    assert keys_of(b.list("e/d/")) == (["e/d/"] if kept else [], [])
    assert keys_of(b.list("e/", delimiter=None)) == (["e/g"], [])
    if kept:
        assert b.head("e/d/").headers.get("Content-Type", "").startswith("application/x-directory")
    b.remove("e/d/")
    assert keys_of(b.list("e/")) == (["e/g"], [])


def test_bulk_delete_of_more_keys_than_one_request_takes(subject):
    b = subject.view
    keys = ["many/%04d" % i for i in range(1003)]  # two DeleteObjects: 1000 keys, then 3
    b.run_parallel((lambda k=k: b.put(k, b"")) for k in keys + ["many_kept"])
    assert b.delete_keys(keys) == []
    assert keys_of(b.list("", delimiter=None)) == (["many_kept"], [])


# -- listings -----------------------------------------------------------------------------


LAYOUT = ["a", "b/", "b/1", "b/2", "b/c/3", "b_$folder$", "ba", "c/d/e", "z"]


def test_a_listing_with_a_delimiter(subject):
    b = subject.view
    for key in LAYOUT:
        b.put(key, b"" if key.endswith("/") else key.encode())  # (SeaweedFS keeps no body on a marker)
    assert keys_of(b.list("")) == (["a", "b_$folder$", "ba", "z"], ["b/", "c/"])
    assert keys_of(b.list("b/")) == (["b/", "b/1", "b/2"], ["b/c/"])
    assert keys_of(b.list("b")) == (["b_$folder$", "ba"], ["b/"])
    assert keys_of(b.list("nothing/")) == ([], [])
    entries = next(b.list("b/")).entries
    assert [(e.size, e.etag) for e in entries] == [
        (len(body), hashlib.md5(body).hexdigest()) for body in (b"", b"b/1", b"b/2")
    ]
    assert all(e.mtime > 0 for e in entries)


def test_a_recursive_listing(subject):
    b = subject.view
    for key in LAYOUT:
        b.put(key, b"")
    assert [e.key for e in b.list_all("")] == sorted(LAYOUT)
    assert [e.key for e in b.list_all("b/")] == ["b/", "b/1", "b/2", "b/c/3"]


@pytest.mark.parametrize("delimiter", ["/", None])
def test_a_listing_by_pages(subject, delimiter):
    b = subject.view
    for key in LAYOUT:
        b.put(key, b"")
    whole = keys_of(b.list("", delimiter=delimiter))
    pages = list(b.list("", delimiter=delimiter, max_keys=2))
    assert keys_of(pages) == whole
    assert all(len(p.entries) + len(p.prefixes) <= 2 for p in pages)
    assert [p.truncated for p in pages] == [True] * (len(pages) - 1) + [False]
    first = next(b.list("", delimiter=delimiter, max_keys=1))
    assert first.truncated and len(first.entries) + len(first.prefixes) == 1
    after = keys_of(b.list("", delimiter=None, start_after="b/2"))
    assert after == ([k for k in sorted(LAYOUT) if k > "b/2"], [])


# -- multipart --------------------------------------------------------------------------------


def test_a_multipart_upload(subject):
    b = subject.view
    first, second = os.urandom(5 * MiB), os.urandom(1000)
    mpu = b.start_multipart("big", {"Content-Type": "application/x-test", "x-amz-meta-m": "yes"})
    part2 = mpu.upload_part(2, second)
    part1 = mpu.upload_part(1, first)
    assert (part1, part2) == (hashlib.md5(first).hexdigest(), hashlib.md5(second).hexdigest())
    etag = mpu.complete()
    assert etag == mpu.expected_etag() == composite([hashlib.md5(x).digest() for x in (first, second)])
    info = b.head("big")
    assert (info.size, info.etag) == (len(first) + len(second), etag)
    assert info.metadata == {"x-amz-meta-m": "yes"} and info.headers["Content-Type"] == "application/x-test"
    assert b.get_range("big", 5 * MiB - 2, 4) == first[-2:] + second[:2]
    assert b.part_layout("big", len(first) + len(second), 2) == PartLayout(5 * MiB)


def test_copied_parts(subject):
    b = subject.view
    data = os.urandom(5 * MiB + 100)
    source = b.put("src", data)
    mpu = b.start_multipart("dst", checksum=False)
    try:
        mpu.copy_part(1, b.copy_source("src"), 0, 5 * MiB - 1, if_match=source)
        if "copy ignores if-match" not in subject.quirks:
            with pytest.raises(S3Error) as changed:
                mpu.copy_part(2, b.copy_source("src"), 5 * MiB, len(data) - 1, if_match="0" * 32)
            assert changed.value.precondition_failed
        mpu.upload_part(2, b"tail")
        mpu.complete()
    except BaseException:
        mpu.abort()
        raise
    assert b.get_range("dst", 0, len(data)) == data[: 5 * MiB] + b"tail"


def test_an_aborted_upload_leaves_nothing(subject):
    b = subject.view
    mpu = b.start_multipart("gone")
    mpu.upload_part(1, b"x" * 100)
    assert b.abort_multipart("gone", mpu.upload_id)
    if "complete after abort" not in subject.quirks:
        with pytest.raises(S3Error) as aborted:
            mpu.complete()
        assert (aborted.value.status, aborted.value.code) == (404, "NoSuchUpload")
    with pytest.raises(S3Error) as missing:
        b.head("gone")
    assert missing.value.not_found


# -- buckets ----------------------------------------------------------------------------------


def test_a_bucket_that_is_not_there(subject):
    other = Bucket(subject.store, s3rig.unique_bucket_name("absent"))
    with pytest.raises(S3Error) as refused:
        other.head("k")
    assert (refused.value.status, refused.value.code) == (404, "NotFound")  # a HEAD has no body to say more
    for call in (
        lambda: other.put("k", b"1"),
        lambda: next(other.list("")),
        lambda: other.get_range("k", 0, 1),
    ):
        with pytest.raises(S3Error) as refused:
            call()
        assert (refused.value.status, refused.value.code) == (404, "NoSuchBucket")


def test_buckets_are_apart(subject):
    store = subject.store
    second = s3rig.unique_bucket_name("second")
    store.create_bucket(second)  # type: ignore[attr-defined]
    try:
        subject.view.put("k", b"here")
        other = Bucket(store, second)
        with pytest.raises(S3Error) as missing:
            other.head("k")
        assert missing.value.not_found
        assert keys_of(other.list("")) == ([], [])
        other.put("k", b"there")
        assert subject.view.get_range("k", 0, 10) == b"here"
        assert store.bucket_exists(second)  # type: ignore[attr-defined]
    finally:
        for e in list(Bucket(store, second).list_all("")):
            store.remove(S3Name(e.key, second))
        store.delete_bucket(second)  # type: ignore[attr-defined]
    assert not store.bucket_exists(second)  # type: ignore[attr-defined]
