"""An in-memory stand-in for RemoteStore: the filesystem's unit tests run on it.

It implements the part of the connector's interface the filesystem uses,
with S3's behaviour where it matters (sorted listings with a delimiter,
If-Match, metadata REPLACE), and counts requests.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.names import S3Name, resolve
from s3fs_mount.s3.store import KEPT_HEADERS, MultipartUpload, ObjectInfo, metadata_of
from s3fs_mount.s3.xmlparse import ListEntry, ListPage


class FakeObject:
    def __init__(self, data: bytes, headers: dict[str, str]) -> None:
        self.data = data
        self.metadata = metadata_of(headers)
        self.headers = {k: v for k, v in headers.items() if k in KEPT_HEADERS}
        self.etag = hashlib.md5(data).hexdigest()
        self.mtime = time.time()


class FakeMultipart(MultipartUpload):
    def upload_part(self, number: int, data: bytes, checksum: dict | None = None) -> str:
        self.store.calls["PUT part"] += 1
        self.parts[number] = bytes(data)  # type: ignore[assignment]
        return str(number)

    def copy_part(self, number: int, source: str, first: int, last: int, if_match: str | None = None) -> str:
        self.store.calls["COPY part"] += 1
        o = self.store._get(source.split("/", 2)[2])
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed")
        self.parts[number] = o.data[first:last + 1]  # type: ignore[assignment]
        return str(number)

    def complete(self, if_match: str | None = None, if_none_match: bool = False) -> str:
        data = b"".join(self.parts[n] for n in sorted(self.parts))  # type: ignore[misc]
        self.store.uploads.discard(self.upload_id)
        return self.store.put(S3Name(self.key, self.bucket), data, self.create_headers,
                              if_match=if_match, if_none_match=if_none_match)

    def abort(self) -> bool:
        self.store.uploads.discard(self.upload_id)
        return True


class FakeStore:
    """Objects in a dict; ``calls`` counts requests by kind."""

    def __init__(self, bucket: str = "bucket", drops_marker_metadata: bool = False) -> None:
        self.bucket = bucket
        #: As SeaweedFS: user metadata on keys ending in '/' is not kept.
        self.drops_marker_metadata = drops_marker_metadata
        self.flip_reads = 0  # GETs still to answer with one byte changed
        self.checksums = True
        self.checksum_algorithm = None  # uploads carry Content-MD5, as to a server without CRC32
        self.objects: dict[str, FakeObject] = {}
        self.calls: Counter[str] = Counter()
        self.uploads: set[str] = set()
        self._ids = itertools.count(1)

    def _key(self, name: str | S3Name) -> str:
        return resolve(name, self.bucket)[1]

    def _get(self, key: str) -> FakeObject:
        try:
            return self.objects[key]
        except KeyError:
            raise S3Error(404, "NoSuchKey", resource=key) from None

    def head(self, name: str | S3Name) -> ObjectInfo:
        self.calls["HEAD"] += 1
        key = self._key(name)
        o = self._get(key)
        return ObjectInfo(key, len(o.data), o.etag, o.mtime, dict(o.metadata), dict(o.headers))

    def get_range(self, name: str | S3Name, start: int, length: int, if_match: str | None = None) -> bytes:
        self.calls["GET"] += 1
        o = self._get(self._key(name))
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed")
        data = o.data[start:start + length]
        self.calls["bytes down"] += len(data)
        if self.flip_reads and data:  # one byte changed on the way, as a bad network would
            self.flip_reads -= 1
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        return data

    def first_part_size(self, name: str | S3Name) -> int | None:
        return None  # every object here is one PUT

    def part_layout(self, name: str | S3Name, size: int, count: int) -> None:
        return None  # every object here is one PUT

    def get_range_blocks(self, name: str | S3Name, start: int, length: int, block: int,
                         if_match: str | None = None) -> list[bytes]:
        data = self.get_range(name, start, length, if_match)
        return [data[i:i + block] for i in range(0, len(data), block)]

    def put(self, name: str | S3Name, data: bytes | Callable[[], object], headers: dict | None = None,
            if_match: str | None = None, if_none_match: bool = False) -> str:
        self.calls["PUT"] += 1
        key = self._key(name)
        current = self.objects.get(key)
        if (if_match and (current is None or current.etag != if_match)) or (if_none_match and current):
            raise S3Error(412, "PreconditionFailed", resource=key)
        body = data if isinstance(data, bytes) else data().read()  # type: ignore[attr-defined]
        o = FakeObject(bytes(body), dict(headers or {}))
        if self.drops_marker_metadata and key.endswith("/"):
            o.metadata = {}
        self.objects[key] = o
        return o.etag

    def probe_conditional_writes(self, bucket: str) -> tuple[bool, bool]:
        return True, True

    def probe_marker_metadata(self, bucket: str, prefix: str = "") -> bool:
        return not self.drops_marker_metadata

    def remove(self, name: str | S3Name) -> None:
        self.calls["DELETE"] += 1
        self.objects.pop(self._key(name), None)

    def start_multipart(self, name: str | S3Name, headers: dict | None = None,
                        checksum: bool = True) -> MultipartUpload:
        self.calls["POST"] += 1
        mpu = FakeMultipart(self, self.bucket, self._key(name), "up%d" % next(self._ids))  # type: ignore[arg-type]
        mpu.create_headers = dict(headers or {})  # type: ignore[attr-defined]
        self.uploads.add(mpu.upload_id)
        return mpu

    def abort_multipart(self, key: str, upload_id: str, bucket: str | None = None) -> bool:
        self.uploads.discard(upload_id)
        return True

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None:
        for job in jobs:
            job()

    def copy_object(self, source, destination, headers=None, replace_metadata=False, if_match=None,
                    source_info=None, size=None) -> str:
        self.calls["COPY"] += 1
        if source_info is None and (size is None or replace_metadata):
            self.calls["HEAD"] += 1  # as the real one: it must learn the size (and headers)
        o = self._get(self._key(source))
        if if_match and if_match != o.etag:
            raise S3Error(412, "PreconditionFailed")
        new_headers = dict(o.headers)
        if replace_metadata:
            new_headers.update(headers or {})
        else:
            new_headers.update(o.metadata)
        copy = FakeObject(o.data, new_headers)
        self.objects[self._key(destination)] = copy
        return copy.etag

    def list(self, prefix: str = "", delimiter: str | None = "/", bucket: str | None = None,
             max_keys: int = 1000, start_after: str | None = None) -> Iterator[ListPage]:
        """ListObjectsV2 as S3 pages it: ``max_keys`` entries and prefixes a page, in key order."""
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        after = start_after or ""
        while True:
            self.calls["LIST"] += 1
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
                    o = self.objects[keys[i]]
                    page.entries.append(ListEntry(keys[i], len(o.data), o.etag, o.mtime))
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

    def delete_keys(self, keys: Iterable[str], bucket: str | None = None) -> list[tuple[str, str]]:
        self.calls["DELETE multi"] += 1
        for key in keys:
            self.objects.pop(key, None)
        return []
