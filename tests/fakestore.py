"""An in-memory stand-in for RemoteStore: the filesystem's unit tests run on it.

It satisfies :class:`s3fs_mount.s3.bucket.ObjectStore`, as RemoteStore does, and
behaves as S3 where the filesystem can tell: buckets (a request for one it does
not hold fails with NoSuchBucket, as S3's does), sorted listings with a
delimiter, paginated by ``max_keys``, If-Match / If-None-Match, metadata
REPLACE, multipart ETags. tests/test_store_conformance.py runs the same tests
on it and on the real connector against SeaweedFS and moto, so it cannot drift.

``calls`` counts requests by kind.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from s3fs_mount.fs.attrs import META_PREFIX as META
from s3fs_mount.fs.attrs import METADATA_LIMIT
from s3fs_mount.s3.checksums import body_checksum, composite
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.keepalive import FileSpan
from s3fs_mount.s3.names import S3Name, resolve
from s3fs_mount.s3.parts import AnyLayout, find_layout
from s3fs_mount.s3.store import KEPT_HEADERS, MultipartUpload, ObjectInfo, metadata_of
from s3fs_mount.s3.xmlparse import ListEntry, ListPage


def _check_metadata(headers: dict, name: str | S3Name) -> None:
    """MetadataTooLarge, as AWS answers, for more than 2 KiB of user metadata (names without
    ``x-amz-meta-`` and values, UTF-8); SeaweedFS takes it, so this is no conformance test."""
    size = sum(len(k) - len(META) + len(str(v).encode("utf-8"))
               for k, v in headers.items() if k.lower().startswith(META))
    if size > METADATA_LIMIT:
        raise S3Error(400, "MetadataTooLarge", "Your metadata headers exceed the maximum allowed"
                      " metadata size", resource=str(name))


class FakeObject:
    def __init__(self, data: bytes, headers: dict[str, str], etag: str | None = None,
                 part_size: int | None = None) -> None:
        self.data = data
        self.metadata = metadata_of(headers)
        self.headers = {k: v for k, v in headers.items() if k in KEPT_HEADERS}
        self.etag = etag or hashlib.md5(data).hexdigest()
        self.part_size = part_size  # of part 1, for an object made of parts
        #: (offset, length) of each part, for an object made of parts (what HEAD ?partNumber= says)
        self.part_ranges: list[tuple[int, int]] = []
        self.mtime = time.time()


class FakeMultipart(MultipartUpload):
    def _live(self) -> None:
        if self.upload_id not in self.store.uploads:
            raise S3Error(404, "NoSuchUpload", resource=self.key)

    def upload_part(self, number: int, data: bytes | FileSpan, checksum: dict | None = None) -> str:
        self.store.count("PUT part")
        self._live()
        body = data.read() if isinstance(data, FileSpan) else bytes(data)
        self.store.bodies.append((number, type(data).__name__))
        sent_crc = (checksum or {}).get("x-amz-checksum-crc32")
        if sent_crc is not None:  # checked, as a server that keeps CRC32s checks it
            if sent_crc != body_checksum(body, "CRC32")[0]["x-amz-checksum-crc32"]:
                raise S3Error(400, "BadDigest", resource=self.key)
            self.crc32[number] = sent_crc
        self.data[number] = body
        etag = hashlib.md5(self.data[number]).hexdigest()
        self.parts[number] = etag
        return etag

    def copy_part(self, number: int, source: str, first: int, last: int, if_match: str | None = None) -> str:
        self.store.count("COPY part")
        self._live()
        bucket, key = urllib.parse.unquote(source).lstrip("/").split("/", 1)
        o = self.store._get(S3Name(key, bucket))
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed")
        if first >= len(o.data) or last < first:
            raise S3Error(416, "InvalidRange")
        self.data[number] = o.data[first:last + 1]
        etag = hashlib.md5(self.data[number]).hexdigest()
        self.parts[number] = etag
        return etag

    def complete(self, if_match: str | None = None, if_none_match: bool = False) -> str:
        self._live()
        numbers = sorted(self.parts)
        data = b"".join(self.data[n] for n in numbers)
        etag = composite([bytes.fromhex(self.parts[n]) for n in numbers])
        done = self.store._store(S3Name(self.key, self.bucket), data, self.create_headers, if_match,
                                 if_none_match, etag=etag, part_size=len(self.data[numbers[0]]))
        at, ranges = 0, []
        for n in numbers:
            ranges.append((at, len(self.data[n])))
            at += len(self.data[n])
        self.store._get(S3Name(self.key, self.bucket)).part_ranges = ranges
        self.store.uploads.discard(self.upload_id)  # (a refused completion leaves the upload, as S3 does)
        return done

    def abort(self) -> bool:
        self.store.uploads.discard(self.upload_id)
        return True


class FakeStore:
    """Objects in dicts, one per bucket; ``calls`` counts requests by kind.

    :param bucket: the bucket it holds at first (more by :meth:`create_bucket`).
    :param default_bucket: the bucket of a bare key, as S3Connection's ``default_bucket``
        (default: ``bucket``). It need not exist: a request for it then fails as on S3.
    :param drops_marker_metadata: as SeaweedFS, user metadata on keys ending in '/' is not kept.
    :param renames: as SeaweedFS 4, RenameObject moves an object; else it is taken for a
        PutObject of nothing, as moto (and any server that ignores an unknown sub-resource) does.
    :param backslash_is_slash: as SeaweedFS, a '\\' in a key is stored (and looked up) as '/'.
    :param keeps_directories: as SeaweedFS, every prefix a key was put under is a directory of
        its own, which stays when its last key is deleted (until its ``dir/`` is, once empty): listed as a
        common prefix of its parent, as the key ``dir/`` in a listing of ``dir/``, HEAD of
        ``dir/`` answers (an empty directory object), but a listing of prefix ``dir``, and one
        with no delimiter, leave it out.
    """

    etags_are_md5 = True  #: as RemoteStore.etags_are_md5 without sse/SSE-C

    def __init__(self, bucket: str = "bucket", drops_marker_metadata: bool = False,
                 default_bucket: str | None = None, renames: bool = False,
                 backslash_is_slash: bool = False, keeps_directories: bool = False) -> None:
        self.bucket = bucket
        self.keeps_directories = keeps_directories
        #: bucket -> the directories its keys were put under ('a/', 'a/b/'), with keeps_directories
        self.directories: dict[str, set[str]] = {}
        self.backslash_is_slash = backslash_is_slash
        self.renames = renames
        self.default_bucket = bucket if default_bucket is None else default_bucket
        self.drops_marker_metadata = drops_marker_metadata
        self.flip_reads = 0  # GETs still to answer with one byte changed
        self.checksums = True
        self.checksum_algorithm: str | None = None  # uploads carry Content-MD5, as to a server without CRC32
        #: configure_checksums makes uploads carry CRC32s (checked by upload_part), as to SeaweedFS
        self.crc32_checks = False
        #: (part number, "FileSpan" or the type of the bytes) of every part sent
        self.bodies: list[tuple[int, str]] = []
        self.buckets: dict[str, dict[str, FakeObject]] = {bucket: {}}
        #: Requests by kind, and by the bucket they named. GUARDED_BY(_count_lock) while counting:
        #: the GET threads count at once, and a Counter's ``+=`` of a key it lacks runs Python
        #: (``__missing__``) between the read and the write, where another thread's count is lost.
        self.calls: Counter[str] = Counter()
        self.requested: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.uploads: set[str] = set()
        self._begun: dict[str, MultipartUpload] = {}  # upload id -> its upload (what was sent, for a resume)
        #: key -> the error code a DeleteObjects answers for it (the key stays), as S3 may.
        self.refused_deletes: dict[str, str] = {}
        self.delete_batches: list[int] = []  # keys per delete_keys call
        self.deleted_keys: list[list[str]] = []  # the keys of each delete_keys call
        self._ids = itertools.count(1)

    @property
    def objects(self) -> dict[str, FakeObject]:
        """The objects of the bucket it was made with."""
        return self.buckets[self.bucket]

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` more of ``kind`` in :attr:`calls` (from any thread)."""
        with self._count_lock:
            self.calls[kind] += n

    def _bucket(self, bucket: str | None) -> dict[str, FakeObject]:
        bucket = bucket or self.default_bucket
        if not bucket:
            raise ValueError("no bucket: give bucket= or a default_bucket")
        with self._count_lock:
            self.requested[bucket] += 1
        try:
            return self.buckets[bucket]
        except KeyError:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist", resource=bucket) \
                from None

    def _at(self, name: str | S3Name) -> tuple[dict[str, FakeObject], str]:
        bucket, key = resolve(name, self.default_bucket)
        if self.backslash_is_slash:
            key = key.replace("\\", "/")
        return self._bucket(bucket), key

    def _get(self, name: str | S3Name) -> FakeObject:
        objects, key = self._at(name)
        try:
            return objects[key]
        except KeyError:
            raise S3Error(404, "NoSuchKey", resource=key) from None

    # -- buckets ------------------------------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        self.buckets.setdefault(bucket, {})

    def delete_bucket(self, bucket: str) -> None:
        if self._bucket(bucket):
            raise S3Error(409, "BucketNotEmpty", resource=bucket)
        del self.buckets[bucket]

    def bucket_exists(self, bucket: str) -> bool:
        return bucket in self.buckets

    # -- objects --------------------------------------------------------------------------

    def head_ahead(self, remote_name: str | S3Name, named: str | None = None) -> None:
        """No sender of its own: the caller sends :meth:`head` in threads (as through a proxy)."""
        return None

    def head(self, remote_name: str | S3Name) -> ObjectInfo:
        self.count("HEAD")
        try:
            o = self._get(remote_name)
        except S3Error as exc:  # an answer to a HEAD has no body: its status is all S3 says
            bucket, key = resolve(remote_name, self.default_bucket)
            if key not in self.directories.get(bucket, ()):
                raise S3Error(exc.status, resource=exc.resource) from None
            o = FakeObject(b"", {"Content-Type": "application/x-directory"})  # a kept directory
        return ObjectInfo(resolve(remote_name, self.default_bucket)[1], len(o.data), o.etag, o.mtime,
                          dict(o.metadata), dict(o.headers))

    def get_range(self, remote_name: str | S3Name, start: int, length: int,
                  if_match: str | None = None) -> bytes:
        self.count("GET")
        o = self._get(remote_name)
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed")
        data = o.data[start:start + length] if length > 0 else b""
        self.count("bytes down", len(data))
        if self.flip_reads and data:  # one byte changed on the way, as a bad network would
            self.flip_reads -= 1
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        return data

    def part_layout(
        self, remote_name: str | S3Name, size: int, count: int, every: bool = False
    ) -> AnyLayout | None:
        o = self._get(remote_name)

        part = o.part_size or len(o.data)
        told = o.part_ranges or [(at, min(part, len(o.data) - at)) for at in range(0, len(o.data), part)]

        def ranges_of(numbers: Iterable[int]) -> dict[int, tuple[int, int] | None]:
            asked = list(numbers)
            self.count("HEAD part", len(asked))
            return {n: told[n - 1] if n <= len(told) else None for n in asked}

        return find_layout(size, count, ranges_of, every)

    def get_range_blocks(self, remote_name: str | S3Name, start: int, length: int, block: int,
                         if_match: str | None = None) -> list[bytes]:
        data = self.get_range(remote_name, start, length, if_match)
        return [data[i:i + block] for i in range(0, len(data), block)]

    def put(self, remote_name: str | S3Name, data: bytes | Callable[[], object], headers: dict | None = None,
            if_match: str | None = None, if_none_match: bool = False) -> str:
        self.count("PUT")
        body = data if isinstance(data, bytes) else data().read()  # type: ignore[attr-defined]
        _check_metadata(headers or {}, remote_name)
        return self._store(remote_name, bytes(body), dict(headers or {}), if_match, if_none_match)

    def _store(self, name: str | S3Name, data: bytes, headers: dict, if_match: str | None,
               if_none_match: bool, etag: str | None = None, part_size: int | None = None) -> str:
        objects, key = self._at(name)
        current = objects.get(key)
        if (if_match and (current is None or current.etag != if_match)) or (if_none_match and current):
            raise S3Error(412, "PreconditionFailed", resource=key)
        o = FakeObject(data, headers, etag, part_size)
        if self.drops_marker_metadata and key.endswith("/"):
            o.metadata = {}
        objects[key] = o
        self._made_directories(name, key)
        return o.etag

    def _made_directories(self, name: str | S3Name, key: str) -> None:
        """With keeps_directories: ``key``'s prefixes are directories from now on."""
        if self.keeps_directories:
            bucket = resolve(name, self.default_bucket)[0]
            parts = key.split("/")[:-1]
            self.directories.setdefault(bucket, set()).update(
                "/".join(parts[: i + 1]) + "/" for i in range(len(parts))
            )

    def _directory_deleted(self, bucket: str, key: str) -> None:
        """``key`` was deleted: the directory ``key`` ends in '/' goes with it, unless keys or
        directories are left in it (its marker alone went)."""
        kept = self.directories.get(bucket, set())
        if key.endswith("/") and not any(k.startswith(key) for k in self.buckets.get(bucket, {})):
            if not any(d.startswith(key) and d != key for d in kept):  # nor a directory kept in it
                kept.discard(key)

    def configure_checksums(self, bucket: str) -> str | None:
        self._bucket(bucket)
        if self.crc32_checks:
            self.checksum_algorithm = "CRC32"
        return self.checksum_algorithm  # None: uploads carry Content-MD5

    def probe_conditional_writes(self, bucket: str) -> tuple[bool, bool]:
        self._bucket(bucket)
        return True, True

    def probe_marker_metadata(self, bucket: str, prefix: str = "") -> bool:
        self._bucket(bucket)
        return not self.drops_marker_metadata

    def probe_rename_object(self, bucket: str, prefix: str = "") -> bool:
        self._bucket(bucket)
        return self.renames

    def probe_backslash_keys(self, bucket: str, prefix: str = "") -> bool:
        self._bucket(bucket)
        return not self.backslash_is_slash

    def rename_object(self, remote_source: str | S3Name, remote_destination: str | S3Name,
                      if_match: str | None = None) -> None:
        self.count("RENAME")
        if not self.renames:  # a PutObject of nothing, as moto answers it
            self._store(remote_destination, b"", {}, None, False)
            return
        objects, key = self._at(remote_source)
        o = self._get(remote_source)
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed", resource=key)
        destination, new_key = self._at(remote_destination)
        destination[new_key] = objects.pop(key)
        self._made_directories(remote_destination, new_key)

    def remove(self, remote_name: str | S3Name, if_match: str | None = None) -> None:
        self.count("DELETE")
        objects, key = self._at(remote_name)
        if if_match and key in objects and objects[key].etag != if_match.strip('"'):
            raise S3Error(412, "PreconditionFailed", resource=key)  # another version than the one named
        objects.pop(key, None)
        self._directory_deleted(resolve(remote_name, self.default_bucket)[0], key)

    def start_multipart(self, remote_name: str | S3Name, headers: dict | None = None,
                        checksum: bool = True) -> MultipartUpload:
        self.count("POST")
        bucket, key = resolve(remote_name, self.default_bucket)
        self._bucket(bucket)
        _check_metadata(headers or {}, key)
        algorithm = self.checksum_algorithm if checksum and self.checksums else None
        mpu = FakeMultipart(self, bucket, key, "up%d" % next(self._ids), algorithm)  # type: ignore[arg-type]
        mpu.create_headers = dict(headers or {})  # type: ignore[attr-defined]
        mpu.data = {}  # type: ignore[attr-defined]
        self.uploads.add(mpu.upload_id)
        self._begun[mpu.upload_id] = mpu
        return mpu

    def resume_multipart(self, remote_name: str | S3Name, upload_id: str, parts: dict,
                         crc32: dict | None = None, algorithm: str | None = None) -> MultipartUpload:
        bucket, key = resolve(remote_name, self.default_bucket)
        mpu = FakeMultipart(self, bucket, key, upload_id, algorithm)  # type: ignore[arg-type]
        begun = self._begun.get(upload_id)
        mpu.create_headers = dict(begun.create_headers) if begun else {}  # type: ignore[attr-defined]
        sent = begun.data if begun else {}  # type: ignore[attr-defined]
        mpu.data = {n: sent[n] for n in parts if n in sent}  # type: ignore[attr-defined]
        mpu.parts.update(parts)
        mpu.crc32.update(crc32 or {})
        return mpu

    def abort_multipart(self, key: str, upload_id: str, bucket: str | None = None) -> bool:
        self._bucket(bucket)
        self.uploads.discard(upload_id)
        return True

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None:
        for job in jobs:
            job()

    def copy_object(self, remote_source, remote_destination, headers=None, replace_metadata=False,
                    if_match=None, source_info=None, size=None, on_parts=None, if_none_match=False) -> str:
        # (one copy whatever the size: on_parts, the real store's notice of a copy in parts, never comes)
        self.count("COPY")
        if source_info is None and (size is None or replace_metadata):
            self.count("HEAD")  # as the real one: it must learn the size (and headers)
        o = self._get(remote_source)
        objects, key = self._at(remote_destination)
        if (if_match and if_match != o.etag) or (if_none_match and key in objects):
            raise S3Error(412, "PreconditionFailed")
        new_headers = dict(o.headers)
        if replace_metadata:
            _check_metadata(headers or {}, key)
            new_headers.update(headers or {})
        else:
            new_headers.update(o.metadata)
        copy = FakeObject(o.data, new_headers)
        objects[key] = copy
        return copy.etag

    # -- listing and bulk -----------------------------------------------------------------

    def list(self, prefix: str = "", delimiter: str | None = "/", bucket: str | None = None,
             max_keys: int = 1000, start_after: str | None = None) -> Iterator[ListPage]:
        """ListObjectsV2 as S3 pages it: ``max_keys`` entries and prefixes a page, in key order."""
        objects = self._bucket(bucket)
        kept = self.directories.get(bucket or self.default_bucket, set())
        keys = [k for k in list(objects) if k.startswith(prefix)]
        # a kept directory with no key left in it: in a listing with a delimiter, but not in one of
        # the keys beginning with its name
        empty = [d for d in kept if delimiter and d.startswith(prefix) and d != prefix + "/" and not any(
            k.startswith(d) for k in keys)]
        keys = sorted(keys + empty)
        after = start_after or ""
        while True:
            self.count("LIST")
            page = ListPage()
            i = bisect.bisect_right(keys, after)
            while i < len(keys) and len(page.entries) + len(page.prefixes) < max_keys:
                rest = keys[i][len(prefix):]
                if delimiter and delimiter in rest:
                    common = prefix + rest.split(delimiter, 1)[0] + delimiter
                    page.prefixes.append(common)
                    while i < len(keys) and keys[i].startswith(common):
                        i += 1
                else:
                    o = objects.get(keys[i])  # None: deleted (another thread) since the listing began
                    if o is None and keys[i] in kept:
                        o = FakeObject(b"", {})  # a kept directory: its own entry
                    if o is not None:
                        page.entries.append(ListEntry(keys[i], len(o.data), o.etag, o.mtime, "STANDARD"))
                    i += 1
                after = keys[i - 1]
            page.truncated = i < len(keys)
            page.continuation = after if page.truncated else None
            yield page
            if not page.truncated:
                return

    def list_all(self, prefix: str = "", bucket: str | None = None) -> Iterator[ListEntry]:
        for page in self.list(prefix, delimiter=None, bucket=bucket):
            yield from page.entries

    def delete_keys(self, keys: Iterable[str], bucket: str | None = None,
                    etags: dict[str, str] | None = None) -> list[tuple[str, str]]:
        keys = list(keys)
        self.delete_batches.append(len(keys))
        self.deleted_keys.append(keys)
        self.count("DELETE multi", max(1, -(-len(keys) // 1000)))  # 1000 keys per request
        objects = self._bucket(bucket)
        failed = []
        for key in sorted(keys, reverse=True):  # deepest first, as RemoteStore sends them
            if key in self.refused_deletes:
                failed.append((key, self.refused_deletes[key]))
            elif key in objects and (etags or {}).get(key, objects[key].etag).strip('"') != objects[key].etag:
                failed.append((key, "PreconditionFailed"))  # another version than the one named
            else:
                objects.pop(key, None)
                self._directory_deleted(resolve(key if bucket is None else S3Name(key, bucket),
                                                self.default_bucket)[0], key)
        return failed
