"""Bucket: the connector bound to one bucket (and optionally a key prefix).

The filesystem reaches S3 through a :class:`Bucket` and nothing else, so no
request of a mount can name another bucket: the bucket is fixed once, at
construction, and every key is relative to it (and to ``prefix``)::

    >>> photos = Bucket(RemoteStore(S3Connection(**config['s3'])), 'photos')
    >>> photos.put('2024/a.jpg', b'...')
    >>> [e.key for page in photos.list('2024/') for e in page.entries]
    ['2024/a.jpg']

With ``prefix='archive/'`` the same calls touch ``archive/2024/a.jpg``, and
listings give keys without the prefix (gcsfuse's ``prefix_bucket``).

A Bucket is built over any :class:`ObjectStore`: the connector's
:class:`~s3fs_mount.s3.store.RemoteStore`, or the tests' in-memory fake,
which is held to the same behaviour by the store conformance tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Protocol, runtime_checkable

from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.names import RemoteName, S3Name
from s3fs_mount.s3.parts import AnyLayout
from s3fs_mount.s3.pipelined import Pending
from s3fs_mount.s3.store import MultipartUpload, ObjectInfo, copy_source
from s3fs_mount.s3.xmlparse import ListEntry, ListPage


@runtime_checkable
class ObjectStore(Protocol):
    """What a :class:`Bucket` asks of the connector (names carry their bucket).

    :class:`~s3fs_mount.s3.store.RemoteStore` is one; ``tests/fakestore.py``'s
    FakeStore is another. A request for a bucket the store does not hold
    raises :class:`~s3fs_mount.s3.errors.S3Error` 404 ``NoSuchBucket``.
    """

    #: Uploads carry a checksum the server checks.
    checksums: bool
    #: ``'CRC32'`` when uploads carry ``x-amz-checksum-crc32`` (else Content-MD5, or none).
    checksum_algorithm: str | None
    #: False when what the store writes gets ETags that are no MD5 (SSE-KMS, SSE-C).
    etags_are_md5: bool

    def head(self, remote_name: RemoteName) -> ObjectInfo: ...

    def head_ahead(self, remote_name: RemoteName, named: str | None = None) -> Pending[ObjectInfo] | None: ...

    def get_range(
        self, remote_name: RemoteName, start: int, length: int, if_match: str | None = None
    ) -> bytes: ...

    def get_range_blocks(
        self, remote_name: RemoteName, start: int, length: int, block: int, if_match: str | None = None
    ) -> list[bytes]: ...

    def part_layout(
        self, remote_name: RemoteName, size: int, count: int, every: bool = False
    ) -> AnyLayout | None: ...

    def put(
        self,
        remote_name: RemoteName,
        data: bytes | Callable[[], IO[bytes]],
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str: ...

    def remove(self, remote_name: RemoteName, if_match: str | None = None) -> None: ...

    def copy_object(
        self,
        remote_source: RemoteName,
        remote_destination: RemoteName,
        headers: Mapping[str, str] | None = None,
        replace_metadata: bool = False,
        if_match: str | None = None,
        source_info: ObjectInfo | None = None,
        size: int | None = None,
        on_parts: Callable[[MultipartUpload, bool], None] | None = None,
        if_none_match: bool = False,
    ) -> str: ...

    def rename_object(
        self, remote_source: RemoteName, remote_destination: RemoteName, if_match: str | None = None
    ) -> None: ...

    def list(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        bucket: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> Iterator[ListPage]: ...

    def list_all(self, prefix: str = "", bucket: str | None = None) -> Iterator[ListEntry]: ...

    def delete_keys(self, keys: Iterable[str], bucket: str | None = None,
                    etags: Mapping[str, str] | None = None) -> list[tuple[str, str]]: ...

    def start_multipart(
        self, remote_name: RemoteName, headers: Mapping[str, str] | None = None, checksum: bool = True
    ) -> MultipartUpload: ...

    def abort_multipart(self, key: str, upload_id: str, bucket: str | None = None) -> bool: ...

    def resume_multipart(
        self,
        remote_name: RemoteName,
        upload_id: str,
        parts: Mapping[int, str],
        crc32: Mapping[int, str] | None = None,
        algorithm: str | None = None,
    ) -> MultipartUpload: ...

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None: ...

    def configure_checksums(self, bucket: str) -> str | None: ...

    def probe_conditional_writes(self, bucket: str) -> tuple[bool, bool]: ...

    def probe_marker_metadata(self, bucket: str, prefix: str = "") -> bool: ...

    def probe_rename_object(self, bucket: str, prefix: str = "") -> bool: ...

    def probe_backslash_keys(self, bucket: str, prefix: str = "") -> bool: ...


#: The longest key S3 stores, in bytes of UTF-8 (AWS and SeaweedFS answer KeyTooLongError past it).
KEY_MAX_BYTES = 1024


class Bucket:
    """One bucket of an :class:`ObjectStore` (and a key prefix in it); keys are relative to both.

    The methods are the store's, less the bucket: see
    :class:`~s3fs_mount.s3.store.RemoteStore` for what each does and raises.

    :param store: the connector (or a stand-in for it).
    :param name: the bucket.
    :param prefix: prepended to every key sent, taken off every key listed ('' for none).
    """

    def __init__(self, store: ObjectStore, name: str, prefix: str = "") -> None:
        if not name:
            raise ValueError("a Bucket needs a bucket name")
        self.store = store
        self.name = name
        self.prefix = prefix

    def __repr__(self) -> str:
        return "Bucket(%r, prefix=%r)" % (self.name, self.prefix)

    def under(self, prefix: str) -> Bucket:
        """The view of the keys under ``prefix`` ('a/b', '/a/b/': a path in this view), keys relative to it.

        ::

            >>> Bucket(store, 'photos').under('/2024/')
            Bucket('photos', prefix='2024/')
        """
        rel = prefix.strip("/")
        return Bucket(self.store, self.name, self.prefix + rel + "/") if rel else self

    def whole(self) -> Bucket:
        """This bucket without the prefix (itself when it has none)."""
        return Bucket(self.store, self.name) if self.prefix else self

    def key_room(self) -> int:
        """The longest key (in bytes of UTF-8) of this view that S3 keeps: :data:`KEY_MAX_BYTES`
        less the prefix."""
        return KEY_MAX_BYTES - len(self.prefix.encode("utf-8", "surrogateescape"))

    def too_long(self, keys: Iterable[str]) -> str | None:
        """The first of ``keys`` that S3 would refuse as longer than :data:`KEY_MAX_BYTES`
        (with this view's prefix), or None when every one fits."""
        room = self.key_room()
        for key in keys:
            if len(key.encode("utf-8", "surrogateescape")) > room:
                return key
        return None

    def _at(self, key: str) -> S3Name:
        return S3Name(self.prefix + key, self.name)

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) :] if self.prefix and key.startswith(self.prefix) else key

    # -- what the store says of itself ----------------------------------------------

    @property
    def checksums(self) -> bool:
        """Uploads carry a checksum the server checks (``-o checksum``)."""
        return self.store.checksums

    @property
    def checksum_algorithm(self) -> str | None:
        """``'CRC32'`` once :meth:`configure_checksums` found the server keeps it, else None."""
        return self.store.checksum_algorithm

    @property
    def etags_are_md5(self) -> bool:
        """False when what this bucket's writes get ETags that are no MD5 (SSE-KMS, SSE-C)."""
        return self.store.etags_are_md5

    @property
    def endpoint(self) -> str:
        """Where requests go (the connection's endpoint; '' for a store without one)."""
        connection = getattr(self.store, "connection", None)
        return connection.endpoint if connection is not None else ""

    def request_summary(self) -> str:
        """The connection's request counts, as ``s3fs-mount status`` shows them."""
        connection = getattr(self.store, "connection", None)
        if connection is None:
            return ""
        policy = getattr(connection, "retry", None)
        outage = policy.outage.summary() if policy is not None else ""
        return connection.stats.summary() + ("; " + outage if outage else "")

    # -- objects -------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        info = self.store.head(self._at(key))
        return dataclasses.replace(info, key=key) if self.prefix else info

    def head_ahead(self, key: str) -> Pending[ObjectInfo] | None:
        """:meth:`head` sent ahead of need on the store's own sender, if it has one (None: it
        has not; call :meth:`head` in threads of your own)."""
        return self.store.head_ahead(self._at(key), key if self.prefix else None)

    def current_etag(self, key: str) -> str:
        """The ETag of the object at ``key`` now (one HEAD); "" when there is none."""
        try:
            return self.head(key).etag
        except S3Error as exc:
            if exc.not_found:
                return ""
            raise

    def get_range(self, key: str, start: int, length: int, if_match: str | None = None) -> bytes:
        return self.store.get_range(self._at(key), start, length, if_match)

    def get_range_blocks(
        self, key: str, start: int, length: int, block: int, if_match: str | None = None
    ) -> list[bytes]:
        return self.store.get_range_blocks(self._at(key), start, length, block, if_match)

    def part_layout(self, key: str, size: int, count: int, every: bool = False) -> AnyLayout | None:
        return self.store.part_layout(self._at(key), size, count, every)

    def put(
        self,
        key: str,
        data: bytes | Callable[[], IO[bytes]],
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        return self.store.put(self._at(key), data, headers, if_match=if_match, if_none_match=if_none_match)

    def remove(self, key: str, if_match: str | None = None) -> None:
        self.store.remove(self._at(key), if_match=if_match)

    def copy_object(
        self,
        source: str,
        destination: str,
        headers: Mapping[str, str] | None = None,
        replace_metadata: bool = False,
        if_match: str | None = None,
        source_info: ObjectInfo | None = None,
        size: int | None = None,
        on_parts: Callable[[MultipartUpload, bool], None] | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Server-side copy of ``source`` to ``destination``, both in this bucket
        (:meth:`RemoteStore.copy_object <s3fs_mount.s3.store.RemoteStore.copy_object>`)."""
        return self.store.copy_object(
            self._at(source),
            self._at(destination),
            headers,
            replace_metadata=replace_metadata,
            if_match=if_match,
            source_info=source_info,
            size=size,
            on_parts=on_parts,
            if_none_match=if_none_match,
        )

    def rename_object(self, source: str, destination: str, if_match: str | None = None) -> None:
        """RenameObject of ``source`` to ``destination``, both in this bucket (if the probe found it)."""
        self.store.rename_object(self._at(source), self._at(destination), if_match=if_match)

    def copy_source(self, key: str) -> str:
        """``key`` as ``x-amz-copy-source`` names it (``/bucket/key``): for ``MultipartUpload.copy_part``."""
        return copy_source(self.name, self.prefix + key)

    # -- listing and bulk -------------------------------------------------------------

    def list(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> Iterator[ListPage]:
        """ListObjectsV2 of keys under ``prefix``, page by page."""
        pages = self.store.list(
            self.prefix + prefix,
            delimiter=delimiter,
            bucket=self.name,
            max_keys=max_keys,
            start_after=self.prefix + start_after if start_after is not None else None,
        )
        if not self.prefix:
            yield from pages
            return
        for page in pages:
            yield dataclasses.replace(
                page,
                entries=[dataclasses.replace(e, key=self._relative(e.key)) for e in page.entries],
                prefixes=[self._relative(p) for p in page.prefixes],
            )

    def list_all(self, prefix: str = "") -> Iterator[ListEntry]:
        """Every object under ``prefix``, recursively (no delimiter)."""
        for page in self.list(prefix, delimiter=None):
            yield from page.entries

    def delete_keys(self, keys: Iterable[str],
                    etags: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """DeleteObjects; returns ``[(key, error code)]`` of the keys that stay. A key with an
        ETag in ``etags`` is deleted only if S3 still has that version (``PreconditionFailed``)."""
        failed = self.store.delete_keys([self.prefix + k for k in keys], bucket=self.name,
                                        etags={self.prefix + k: e for k, e in (etags or {}).items()})
        return [(self._relative(k), code) for k, code in failed]

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None:
        """Run jobs on the connector's part pool (see RemoteStore.run_parallel)."""
        self.store.run_parallel(jobs)

    # -- multipart -------------------------------------------------------------------------

    def start_multipart(
        self, key: str, headers: Mapping[str, str] | None = None, checksum: bool = True
    ) -> MultipartUpload:
        return self.store.start_multipart(self._at(key), headers, checksum=checksum)

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        return self.store.abort_multipart(self.prefix + key, upload_id, bucket=self.name)

    def resume_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Mapping[int, str],
        crc32: Mapping[int, str] | None = None,
        algorithm: str | None = None,
    ) -> MultipartUpload:
        return self.store.resume_multipart(self._at(key), upload_id, parts, crc32, algorithm)

    # -- probes at mount -----------------------------------------------------------------

    def configure_checksums(self) -> str | None:
        return self.store.configure_checksums(self.name)

    def probe_conditional_writes(self) -> tuple[bool, bool]:
        return self.store.probe_conditional_writes(self.name)

    def probe_marker_metadata(self, prefix: str = "") -> bool:
        return self.store.probe_marker_metadata(self.name, self.prefix + prefix)

    def probe_rename_object(self) -> bool:
        return self.store.probe_rename_object(self.name, self.prefix)

    def probe_backslash_keys(self) -> bool:
        return self.store.probe_backslash_keys(self.name, self.prefix)
