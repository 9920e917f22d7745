"""RemoteStore: what the filesystem (and any script) asks of S3.

The six methods of the seed API (``copy``, ``delete``, ``exists``, ``read``,
``update_metadata``, ``write``) keep its contract exactly: all but ``exists``
log failures and return True/False. The methods the filesystem needs
(``head``, ``get_range``, ``put``, ``upload_file``, ``start_multipart``, :func:`upload_in_parts`,
``copy_object``, ``rename_object``, ``list``, ``delete_keys``, buckets) raise :class:`S3Error`
or the transport's exception instead, so callers can map them to errnos.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Protocol

import requests
import urllib3

from s3fs_mount.s3 import xmlparse
from s3fs_mount.s3.checksums import (
    MISMATCH,
    ChecksumMismatch,
    Verifier,
    body_checksum,
    composite,
    crc32_of_parts,
    parts_of,
    plan,
)
from s3fs_mount.s3.connection import S3Connection, check_headers
from s3fs_mount.s3.errors import BodyBroken, RemoteStoreError, S3Error, TransportError
from s3fs_mount.s3.keepalive import FileSpan, Headers
from s3fs_mount.s3.names import RemoteName, S3Name, resolve
from s3fs_mount.s3.parts import MIN_PART_SIZE, AnyLayout, find_layout, part_size_for
from s3fs_mount.s3.pipelined import Pending
from s3fs_mount.s3.retry import RETRYABLE_CODES, GiveUp
from s3fs_mount.s3.sigv4 import UNSIGNED_PAYLOAD, uri_encode
from s3fs_mount.s3.transport import Response
from s3fs_mount.s3.xmlparse import ListEntry, ListPage

log = logging.getLogger(__name__)

META_PREFIX = "x-amz-meta-"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: The largest object copied by one CopyObject (S3's limit); larger ones are copied in parts
#: (UploadPartCopy) of :data:`COPY_PART`. Tests lower it (``S3FS_MOUNT_TEST_MAX_SINGLE_COPY``, bytes)
#: to copy a small file in parts.
MAX_SINGLE_COPY = int(os.environ.get("S3FS_MOUNT_TEST_MAX_SINGLE_COPY") or 5 * GiB)
COPY_PART = min(512 * MiB, MAX_SINGLE_COPY)
#: The slowest a server-side copy is expected to go (bytes a second). A copy's answer comes only
#: when it is done, so its wait grows with its size: SeaweedFS on this machine, loaded, took 26 s
#: for a 1 GiB CopyObject and 12 s for a 512 MiB UploadPartCopy, against a 30 s timeout.
COPY_RATE_FLOOR = 16 * MiB
#: A ranged GET of up to this many bytes is read whole (over the kept-alive transport), not streamed.
WHOLE_GET = 1 * MiB
#: Response headers a metadata REPLACE must carry over, or S3 resets them.
KEPT_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
    "x-amz-storage-class",
    "x-amz-website-redirect-location",
    "x-amz-tagging-directive",
)


def metadata_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers of ``headers``, names lower-cased (as :func:`_sort_headers`
    reads an answer's)."""
    return _sort_headers(_lowered(headers))[0]


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` in a plain dict with lower-cased names (the kept-alive transport's Headers are:
    a copy in C)."""
    return dict(headers) if isinstance(headers, Headers) else {k.lower(): v for k, v in headers.items()}


def _sort_headers(low: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """One pass over lower-cased headers ``low``: the user metadata (``x-amz-meta-*``), the
    :data:`KEPT_HEADERS` present (in their own spelling), and the ``x-amz-checksum-*`` by name.

    The one reading of which header is user metadata: :func:`metadata_of` (a request's headers)
    and :meth:`ObjectInfo.from_response` (an answer's, one per file of an ``ls -l``: in one
    pass, not ~25 look-ups by name, bench/README.md round 38) both go through it."""
    metadata: dict[str, str] = {}
    kept: dict[str, str] = {}
    checksums: dict[str, str] = {}
    for name, value in low.items():
        if name.startswith("x-amz-"):
            if name.startswith(META_PREFIX):
                metadata[name] = value
            elif name.startswith(CHECKSUM_PREFIX):
                checksums[name[len(CHECKSUM_PREFIX) :]] = value
        if name in _KEPT_BY_LOWER:
            kept[_KEPT_BY_LOWER[name]] = value
    return metadata, kept, checksums


@dataclass
class ObjectInfo:
    """What a HEAD (or GET) says about an object."""

    key: str
    size: int
    etag: str
    mtime: float
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # the KEPT_HEADERS present
    storage_class: str = "STANDARD"
    version_id: str | None = None
    #: An ``x-amz-checksum-*`` the object was stored with, as ``'CRC32:NhCmhg=='`` ('' if none).
    checksum: str = ""
    #: False for SSE-KMS and SSE-C objects: their ETag is no MD5 of the bytes.
    etag_is_md5: bool = True

    @classmethod
    def from_response(cls, key: str, resp: Response) -> ObjectInfo:
        """What the headers of a HEAD's (or GET's) answer say, read in one pass over them.

        A HEAD per file of an ``ls -l``: looked up by name one at a time in the case-blind
        headers, they cost ~25 Python-level look-ups an answer (bench/README.md, round 38)."""
        low = _lowered(resp.headers)
        metadata, kept, checksums = _sort_headers(low)
        get = low.get
        size = int(get("content-length") or 0)
        content_range = get("content-range")
        if content_range is not None:  # bytes a-b/total
            size = int(content_range.rsplit("/", 1)[1])
        return cls(
            key=key,
            size=size,
            etag=(get("etag") or "").strip('"'),
            mtime=xmlparse.parse_time(get("last-modified") or ""),
            metadata=metadata,
            headers=kept,
            storage_class=get("x-amz-storage-class") or "STANDARD",
            version_id=get("x-amz-version-id"),
            checksum=next(
                ("%s:%s" % (name.upper(), checksums[name]) for name in CHECKSUMS if name in checksums), ""
            )
            if checksums
            else "",
            etag_is_md5=(get("x-amz-server-side-encryption") or "").lower() not in ("aws:kms", "aws:kms:dsse")
            and get("x-amz-server-side-encryption-customer-algorithm") is None,
        )

    @property
    def digest(self) -> str:
        """What S3 says the bytes hash to: the ``x-amz-checksum-*``, else the ETag as an MD5.

        ``'CRC32:NhCmhg=='``, ``'MD5:5d41402a...'`` (one PUT), ``'MD5-of-parts:4ec9...-3'``
        (multipart), ``''`` when the ETag is no MD5 one can tell, or :data:`NO_DIGEST` when S3
        said the object is SSE-KMS or SSE-C and stored no checksum: nothing to check, not
        even its ETag (readers must not fall back to it).
        """
        if not self.etag_is_md5 and not self.checksum:
            return NO_DIGEST
        return digest_of(self.etag, self.checksum)


#: KEPT_HEADERS by their lower-cased names (as answers' headers are read).
_KEPT_BY_LOWER = {name.lower(): name for name in KEPT_HEADERS}

#: The checksums S3 may store with an object (``x-amz-checksum-NAME``), and the header prefix.
CHECKSUMS = ("crc64nvme", "crc32", "crc32c", "sha1", "sha256")
CHECKSUM_PREFIX = "x-amz-checksum-"


#: A digest that says "nothing to check with": not even the ETag (which is no MD5 under SSE-KMS/SSE-C).
NO_DIGEST = "none:"


def copy_source(bucket: str, key: str) -> str:
    """``key`` of ``bucket`` as ``x-amz-copy-source`` names it: ``/bucket/key``, URI-encoded."""
    return "/%s/%s" % (bucket, uri_encode(key, safe="/"))


def digest_of(etag: str, checksum: str = "") -> str:
    """An object's digest as :attr:`ObjectInfo.digest` shows it, from its ETag (and checksum)."""
    if checksum:
        return checksum
    parts = parts_of(etag)
    if parts is None:
        return ""
    return ("MD5:" if "-" not in etag else "MD5-of-parts:") + etag


@contextlib.contextmanager
def _body_errors(remote_name: object) -> Iterator[None]:
    """A body that breaks while it is read: the connector's TransportError, as for a request
    (:class:`BodyBroken` where the request's would be retried)."""
    try:
        yield
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        wrapped = TransportError.wrap(exc, "reading %s" % (remote_name,))
        raise (BodyBroken(wrapped.what, wrapped.reason) if wrapped.retryable else wrapped) from exc


def _body_broken(exc: BaseException) -> bool:
    """Retry a streamed read for this? Only a body that broke: the request's own failures were
    retried already (by the connection), and would otherwise be tried 6 x 6 times."""
    return isinstance(exc, BodyBroken)


def write_conditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
    """Headers of a conditional write: replace only version ``if_match``, or only nothing.

    S3 (and SeaweedFS) answer 412 when the condition fails, so a write never
    silently replaces an object another client changed meanwhile.
    """
    if if_match:
        return {"If-Match": '"%s"' % if_match}
    if if_none_match:
        return {"If-None-Match": "*"}
    return {}


class MultipartUpload:
    """One multipart upload under way. Parts may be sent from several threads.

    ::

        >>> mpu = store.start_multipart('big.bin', headers={'x-amz-meta-state': 'new'})
        >>> mpu.upload_part(1, first_8_mib)
        >>> mpu.upload_part(2, rest)
        >>> etag = mpu.complete()        # or mpu.abort()
    """

    def __init__(
        self,
        store: RemoteStore,
        bucket: str,
        key: str,
        upload_id: str,
        algorithm: str | None = None,
        full_object: bool = False,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        #: ``'CRC32'``: begun with ``x-amz-checksum-algorithm``; every part carries its CRC32.
        self.algorithm = algorithm
        #: Begun with ``x-amz-checksum-type: FULL_OBJECT``: the object's CRC32 is of all its bytes.
        self.full_object = full_object
        self._lock = threading.Lock()
        self.parts: dict[int, str] = {}  # GUARDED_BY(_lock): part number -> its ETag
        self.crc32: dict[int, str] = {}  # GUARDED_BY(_lock): part number -> its x-amz-checksum-crc32
        self.sizes: dict[int, int] = {}  # GUARDED_BY(_lock): part number -> its bytes (sent here)
        #: The parts' retries end together: once one part fails for good, no other is sent (again).
        self.give_up = GiveUp()  # GUARDED_BY(_lock) (the field; the token guards itself)

    def upload_part(
        self,
        number: int,
        data: bytes | bytearray | memoryview | FileSpan,
        checksum: Mapping[str, str] | None = None,
    ) -> str:
        """Send part ``number`` (1-based); returns its ETag.

        ``data`` is sent as it is, not copied (the caller's buffer must not change until this
        returns); a :class:`~s3fs_mount.s3.keepalive.FileSpan` is sent from its file.
        ``checksum``: the header :func:`~s3fs_mount.s3.checksums.body_checksum` made for these
        bytes, if the caller has it already (else it is computed here).
        """
        body = data
        headers: dict[str, str] = {}
        if self.store.checksums:
            if checksum:
                headers = dict(checksum)
            else:
                bytes_of = body.read() if isinstance(body, FileSpan) else body
                headers = body_checksum(bytes_of, self.algorithm)[0]
        resp = self.store.connection.request(
            "PUT",
            self.bucket,
            self.key,
            query={"partNumber": str(number), "uploadId": self.upload_id},
            headers=headers,
            body=body,
            payload_hash=UNSIGNED_PAYLOAD,
            give_up=self.parts_give_up(),
        )
        etag = resp.headers.get("ETag", "").strip('"')
        with self._lock:
            self.parts[number] = etag
            self.sizes[number] = data.length if isinstance(data, FileSpan) else len(data)
            if "x-amz-checksum-crc32" in headers:
                self.crc32[number] = headers["x-amz-checksum-crc32"]
        return etag

    def copy_part(self, number: int, source: str, first: int, last: int, if_match: str | None = None) -> str:
        """UploadPartCopy of bytes ``first..last`` of ``source`` (``/bucket/key``).

        With ``if_match`` only from that version of the source (else S3Error 412).
        """
        headers = {"x-amz-copy-source": source, "x-amz-copy-source-range": "bytes=%d-%d" % (first, last)}
        if if_match:
            headers["x-amz-copy-source-if-match"] = '"%s"' % if_match
        resp = self.store.connection.request(
            "PUT",
            self.bucket,
            self.key,
            query={"partNumber": str(number), "uploadId": self.upload_id},
            headers=headers,
            read_timeout=self.store.copy_wait(last - first + 1),
            give_up=self.parts_give_up(),
        )
        etag = xmlparse.parse_text(resp.content, "ETag").strip('"')
        crc = xmlparse.parse_text(resp.content, "ChecksumCRC32") if self.algorithm else ""
        with self._lock:
            self.parts[number] = etag
            self.sizes[number] = last - first + 1
            if crc:
                self.crc32[number] = crc
        if self.algorithm and not crc:
            raise RemoteStoreError("%s: the server gave no CRC32 for copied part %d" % (self.key, number))
        return etag

    def parts_give_up(self) -> GiveUp:
        """What the parts sent now share (:class:`~s3fs_mount.s3.retry.GiveUp`)."""
        with self._lock:
            return self.give_up

    def gave_up(self) -> BaseException | None:
        """The failure of a part that made this upload's parts give up (None: none did)."""
        return self.parts_give_up().cause

    def send_again(self) -> None:
        """Parts sent from now on try again (after every part sent before has ended: the
        parts that failed go again, as a later flush sends them)."""
        with self._lock:
            self.give_up = GiveUp()

    def expected_etag(self) -> str:
        """The ETag S3 gives the completed object (MD5 of the parts' MD5s, then the count)."""
        with self._lock:
            etags = [etag for _, etag in sorted(self.parts.items())]
        try:
            digests = [bytes.fromhex(e) for e in etags]
        except ValueError:
            return ""  # not MD5s (SSE-KMS, some servers): unknown
        return composite(digests)

    def expected_digest(self) -> str:
        """The digest (``CRC32:...``) S3 gives the completed object when it was begun FULL_OBJECT:
        its parts' CRC32s, each checked by S3 as it came, combined. '' when not known here (a
        composite checksum, or parts sent by an earlier process)."""
        with self._lock:
            numbers = sorted(self.parts)
            if not (self.full_object and self.algorithm == "CRC32" and numbers):
                return ""
            if any(n not in self.crc32 or n not in self.sizes for n in numbers):
                return ""
            pieces = [(self.crc32[n], self.sizes[n]) for n in numbers]
        return crc32_of_parts(pieces)

    def sent_bytes(self) -> int:
        """The bytes of the parts sent (or copied) through this object."""
        with self._lock:
            return sum(self.sizes.values())

    def complete(self, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Finish the upload; returns the object's ETag.

        ``if_match`` (an ETag) or ``if_none_match`` make it conditional on the
        object the upload replaces: S3Error 412 when that changed (see
        :func:`write_conditions`).
        """
        with self._lock:
            parts = sorted(self.parts.items())
            crc32 = dict(self.crc32) if self.algorithm else None
        resp = self.store.connection.request(
            "POST",
            self.bucket,
            self.key,
            query={"uploadId": self.upload_id},
            headers=write_conditions(if_match, if_none_match),
            body=xmlparse.complete_multipart_body(parts, crc32),
        )
        # (A 200 with an error body is an S3Error already: S3Connection checks completions.)
        return xmlparse.parse_text(resp.content, "ETag").strip('"')

    def abort(self) -> bool:
        """Abort the upload, freeing its parts. Never raises; False when it could not."""
        try:
            self.store.connection.request(
                "DELETE",
                self.bucket,
                self.key,
                query={"uploadId": self.upload_id},
                expect=(204, 200, 404),
            )
        except Exception as exc:  # best effort: the caller keeps the id to try again later
            log.warning("could not abort multipart upload of %s: %s", self.key, exc)
            return False
        return True


class PartStore(Protocol):
    """What :func:`upload_in_parts` needs: a RemoteStore, or a Bucket (whose names are keys)."""

    def start_multipart(
        self, name: Any, headers: Mapping[str, str] | None = None, checksum: bool = True
    ) -> MultipartUpload: ...

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None: ...


#: Sends part ``number`` (bytes ``[offset, offset + length)`` of the source) of an upload; its ETag.
SendPart = Callable[[MultipartUpload, int, int, int], str]


def upload_in_parts(
    store: PartStore,
    name: Any,
    size: int,
    part_size: int,
    send_part: SendPart,
    headers: Mapping[str, str] | None = None,
    if_match: str | None = None,
    if_none_match: bool = False,
    on_begin: Callable[[MultipartUpload], None] | None = None,
    complete: Callable[[MultipartUpload], str] | None = None,
    abort: Callable[[MultipartUpload], object] | None = None,
    first_alone: bool = False,
) -> str:
    """The one multipart upload of ``size`` known bytes: returns the new object's ETag.

    Parts of :func:`~s3fs_mount.s3.parts.part_size_for` ``(size, part_size)`` bytes go up in
    parallel on the store's part pool (at most ``max_workers`` at once), each sent by
    ``send_part(mpu, number, offset, length)`` (which reads its bytes and gives the part its
    checksum: :meth:`MultipartUpload.upload_part` makes one when not given); then the upload
    completes, conditional on ``if_match`` / ``if_none_match`` (:func:`write_conditions`).
    Any failure aborts it (no part stays behind) and raises. Hooks for callers that keep
    books: ``on_begin(mpu)`` once it has an id, ``complete(mpu)`` instead of the plain
    conditional completion, ``abort(mpu)`` instead of :meth:`MultipartUpload.abort`.
    ``first_alone``: part 1 goes up (its retries spent, at worst) before the others begin: after
    a server failed parts for good, one part tells whether it takes them again.

    ::

        >>> etag = upload_in_parts(store, 'big.bin', size, 8 << 20,
        ...                        lambda mpu, n, off, length: mpu.upload_part(n, read(off, length)))
    """
    part = part_size_for(size, part_size)
    mpu = store.start_multipart(name, headers)
    try:
        if on_begin is not None:
            on_begin(mpu)
        jobs = [
            (lambda n=n, off=off: send_part(mpu, n, off, min(part, size - off)))
            for n, off in enumerate(range(0, size, part), start=1)
        ]
        if first_alone:
            jobs.pop(0)()
        store.run_parallel(jobs)
        if complete is not None:
            return complete(mpu)
        return mpu.complete(if_match=if_match, if_none_match=if_none_match)
    except BaseException:
        if abort is not None:
            abort(mpu)
        else:
            mpu.abort()
        raise


class _KeysNotDeleted(S3Error):
    """A DeleteObjects answered, but some keys failed for a passing reason (retried as such)."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__(200, keys[0][1], "%d key(s) not deleted, e.g. %s" % (len(keys), keys[0][0]))
        self.keys = keys

#: What a HEAD asks for (the object's checksums too).
_HEAD_HEADERS = {"x-amz-checksum-mode": "ENABLED"}


class RemoteStore:
    """Remote storage in S3 through one :class:`S3Connection`.

    ::

        >>> store = RemoteStore(S3Connection(**config['s3']))
        >>> store.write('example', 'example-in-s3', headers={'x-amz-meta-state': 'new'})
        True
        >>> store.exists('example-in-s3')
        (True, {'x-amz-meta-state': 'new'})

    :param connection: the :class:`S3Connection` to use.
    :param part_size: multipart part size in bytes (default 8 MiB, at least 5 MiB).
    :param multipart_threshold: files at least this big upload in parts.
    :param max_workers: parts sent at once by one upload or copy.
    :param checksums: every PUT and part carries a checksum the server checks (``Content-MD5``,
        or ``x-amz-checksum-crc32`` after :meth:`configure_checksums`); off: none, and no hash
        of the body at all.
    """

    def __init__(
        self,
        connection: S3Connection,
        part_size: int = 8 * MiB,
        multipart_threshold: int = 16 * MiB,
        max_workers: int = 8,
        checksums: bool = True,
    ) -> None:
        self.connection = connection
        self.checksums = checksums
        #: ``'CRC32'`` once :meth:`configure_checksums` found the server stores and checks it:
        #: uploads then carry ``x-amz-checksum-crc32`` instead of ``Content-MD5``. Set once.
        self.checksum_algorithm: str | None = None
        #: True once :meth:`configure_checksums` found that multipart uploads begun with
        #: ``x-amz-checksum-type: FULL_OBJECT`` get the CRC32 of all their bytes (AWS): such an
        #: object's checksum stays the same through a CopyObject, which gives it a new ETag. Set once.
        self.full_object_crc32 = False
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.multipart_threshold = multipart_threshold
        self.max_workers = max_workers
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, "s3-part")

    def _name(self, name: RemoteName) -> tuple[str, str]:
        return resolve(name, self.connection.default_bucket)

    @property
    def etags_are_md5(self) -> bool:
        """False when what this store writes gets ETags that are no MD5 (``sse`` aws:kms, SSE-C)."""
        return self.connection.object_options.etags_are_md5

    def close(self) -> None:
        """Stop the part-upload threads."""
        self._pool.shutdown(wait=True)

    # -- the seed API: True/False, failures logged ----------------------------------

    def _guarded(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except (RemoteStoreError, OSError) as exc:
            log.error("%s failed: %s", what, exc)
            return False

    def copy(
        self,
        remote_source: RemoteName,
        remote_destination: RemoteName,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Copy an object. Metadata comes from the source unless ``headers`` holds
        ``x-amz-meta-*`` headers; then exactly those are the destination's metadata.
        """
        headers = dict(headers or {})
        check_headers(headers)  # before the HEAD of the source: a bad header is no 404
        replace = bool(metadata_of(headers))
        return self._guarded(
            "copy %s -> %s" % (remote_source, remote_destination),
            lambda: self.copy_object(remote_source, remote_destination, headers, replace_metadata=replace),
        )

    def delete(self, remote_name: RemoteName) -> bool:
        """Delete an object. Deleting a missing key succeeds, as in S3."""
        bucket, key = self._name(remote_name)
        return self._guarded(
            "delete %s/%s" % (bucket, key),
            lambda: self.remove(remote_name),
        )

    def exists(self, remote_name: RemoteName) -> tuple[bool, dict[str, str]]:
        """``(True, metadata)`` if the object exists, else ``(False, {})``.

        Does not catch transport errors; raises :class:`RemoteStoreError`
        (an :class:`S3Error`) on any status but 200 and 404.
        """
        try:
            info = self.head(remote_name)
        except S3Error as exc:
            if exc.not_found:
                return False, {}
            raise
        return True, info.metadata

    def read(
        self, remote_name: RemoteName, local_name: str, verify: bool | None = None
    ) -> tuple[bool, dict[str, str]]:
        """Download an object into the file ``local_name``: ``(ok, metadata)``.

        ``verify`` (default: ``checksums``): the bytes are checked against what S3 stored
        (see :meth:`download`).
        """
        verify = self.checksums if verify is None else verify
        bucket, key = self._name(remote_name)
        try:
            info = self.download(remote_name, local_name, verify=verify)
        except (RemoteStoreError, OSError) as exc:
            log.error("read %s/%s failed: %s", bucket, key, exc)
            return False, {}
        return True, info.metadata

    def update_metadata(self, remote_name: RemoteName, headers: Mapping[str, str]) -> bool:
        """Replace an object's metadata with the ``x-amz-meta-*`` headers in ``headers``.

        Content-Type and the other content headers are kept (a self-copy with
        ``x-amz-metadata-directive: REPLACE``).
        """
        check_headers(headers)
        return self._guarded(
            "update metadata of %s" % (remote_name,),
            lambda: self.copy_object(remote_name, remote_name, headers, replace_metadata=True),
        )

    def write(
        self, local_name: str, remote_name: RemoteName, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Upload the file ``local_name``; ``x-amz-meta-*`` headers set its metadata.

        A header that cannot be sent (not ASCII, a CR or LF, a bad name) is a ValueError that
        says which and why, before any request, as a missing bucket is.
        """
        check_headers(headers or {})
        return self._guarded(
            "write %s -> %s" % (local_name, remote_name),
            lambda: self.upload_file(local_name, remote_name, headers),
        )

    # -- objects ------------------------------------------------------------------

    def remove(self, remote_name: RemoteName, if_match: str | None = None) -> None:
        """DELETE an object, raising on failure (a missing key is no failure, as in S3).

        With ``if_match`` only if S3 still has that version (``If-Match``): another client's
        newer one stays, and S3Error 412 says so (AWS, SeaweedFS; a server that ignores the
        condition deletes it, as it would without).
        """
        bucket, key = self._name(remote_name)
        headers = {"If-Match": '"%s"' % if_match} if if_match else None
        self.connection.request("DELETE", bucket, key, headers=headers, expect=(204, 200, 404)).close()

    def head(self, remote_name: RemoteName) -> ObjectInfo:
        """HEAD an object. Raises :class:`S3Error` (``.not_found`` for a 404)."""
        bucket, key = self._name(remote_name)
        resp = self.connection.request("HEAD", bucket, key, headers=_HEAD_HEADERS)
        resp.close()
        return ObjectInfo.from_response(key, resp)

    def head_ahead(self, remote_name: RemoteName, named: str | None = None) -> Pending[ObjectInfo] | None:
        """:meth:`head` sent ahead of need (a walk's stats) by the connector's one thread that
        sends many at once (:meth:`S3Connection.send_ahead`): its result is what :meth:`head`
        returns or raises (``named``: the key its ObjectInfo gives, if not the object's). None
        where the connector has no such thread (through a proxy): call :meth:`head` in threads
        of your own."""
        bucket, key = self._name(remote_name)
        info = functools.partial(ObjectInfo.from_response, key if named is None else named)
        return self.connection.send_ahead(bucket, key, _HEAD_HEADERS, info)

    def _download_verifier(
        self, remote_name: RemoteName, info: ObjectInfo, every: bool = False
    ) -> Verifier | None:
        """The check of a whole-object download of ``info``'s version (None: nothing to check with);
        ``every``: each part's place asked of S3 (see :meth:`part_layout`)."""
        found = plan(info.digest)
        if found is None or info.size == 0:
            return None
        layout: int | AnyLayout = info.size
        if found[1] > 1:
            known = self.part_layout(remote_name, info.size, found[1], every)
            if known is None:
                return None
            layout = known
        return Verifier(info.key, info.digest, info.size, layout)

    def part_layout(
        self, remote_name: RemoteName, size: int, count: int, every: bool = False
    ) -> AnyLayout | None:
        """Where the ``count`` parts of a ``size``-byte object begin and end, as the check of a
        multipart ETag or checksum needs them; None when S3 does not say, or it does not add up.
        A part S3 does not have (the ETag's count is not S3's) is :class:`S3Error` 416.

        HEADs with ``partNumber``: the first and the last part (one size throughout, as every SDK
        writes them, or a stream's doubling parts: :mod:`s3fs_mount.s3.parts`); each part, side
        by side on the part pool, when their sizes follow neither, or with ``every``
        (:func:`~s3fs_mount.s3.parts.find_layout`).
        """

        def ranges_of(numbers: Iterable[int]) -> dict[int, tuple[int, int] | None]:
            found: dict[int, tuple[int, int] | None] = {}

            def ask(number: int) -> None:
                found[number] = self._part_range(remote_name, number)

            numbers = list(numbers)
            if len(numbers) <= 2:  # the first and the last: here, not behind uploads' parts in the pool
                for n in numbers:
                    ask(n)
            else:
                self.run_parallel(functools.partial(ask, n) for n in numbers)
            return found

        return find_layout(size, count, ranges_of, every)

    def _part_range(self, remote_name: RemoteName, number: int) -> tuple[int, int] | None:
        """(offset, length) of part ``number`` of a multipart object; None if the server does not say."""
        bucket, key = self._name(remote_name)
        resp = self.connection.request(
            "HEAD", bucket, key, query={"partNumber": str(number)}, expect=(200, 206)
        )
        resp.close()
        found = re.match(r"bytes (\d+)-(\d+)/", resp.headers.get("Content-Range", ""))
        if found:
            return int(found.group(1)), int(found.group(2)) - int(found.group(1)) + 1
        length = int(resp.headers.get("Content-Length") or 0)
        if number == 1 and length and resp.headers.get("x-amz-mp-parts-count"):
            return 0, length
        return None

    def get_range(
        self, remote_name: RemoteName, start: int, length: int, if_match: str | None = None
    ) -> bytes:
        """Bytes ``start .. start+length-1`` of an object (fewer at its end).

        With ``if_match`` (an ETag) a changed object raises S3Error 412
        instead of mixing old and new bytes.
        """
        # Up to WHOLE_GET the connector reads the answer whole (the kept-alive transport): a random
        # read's page costs a GET's latency, and urllib3's streaming ~0.5 ms of CPU more
        # (bench/README.md, round 29).
        whole = length <= WHOLE_GET

        def fetch() -> bytes:
            resp = self._ranged_get(remote_name, start, length, if_match, stream=not whole)
            if resp is None:
                return b""
            if whole:
                data = resp.content
            else:
                with resp, _body_errors(remote_name):  # one read of the whole body: faster than 10 KiB chunks
                    data = resp.raw.read(decode_content=False)
            if resp.status_code == 200:  # server ignored the Range
                data = data[start : start + length]
            return data

        return self.connection.retry.call(fetch, "reading %s" % (remote_name,), _body_broken)

    def get_range_blocks(
        self, remote_name: RemoteName, start: int, length: int, block: int, if_match: str | None = None
    ) -> list[bytes]:
        """Like :meth:`get_range`, the bytes as ``block``-sized pieces (the last may be shorter).

        No allocation as large as the range, and a reader of whole blocks
        can hand them on without a copy.
        """

        def fetch() -> list[bytes]:
            resp = self._ranged_get(remote_name, start, length, if_match)
            if resp is None:
                return []
            with resp, _body_errors(remote_name):
                if resp.status_code == 200:  # server ignored the Range
                    data = resp.raw.read(decode_content=False)[start : start + length]
                    return [data[i : i + block] for i in range(0, len(data), block)]
                blocks = []
                while True:
                    data = resp.raw.read(block, decode_content=False)
                    if not data:
                        return blocks
                    blocks.append(data)

        return self.connection.retry.call(fetch, "reading %s" % (remote_name,), _body_broken)

    def _ranged_get(
        self, remote_name: RemoteName, start: int, length: int, if_match: str | None, stream: bool = True
    ) -> Response | None:
        """The response to a ranged GET (its body streamed, or read whole); None when there are
        no such bytes."""
        bucket, key = self._name(remote_name)
        if length <= 0:
            return None
        headers = {"Range": "bytes=%d-%d" % (start, start + length - 1)}
        if if_match:
            headers["If-Match"] = '"%s"' % if_match
        try:
            return self.connection.request(
                "GET", bucket, key, headers=headers, expect=(200, 206), stream=stream
            )
        except S3Error as exc:
            if exc.status == 416:  # at or past the end
                return None
            raise

    def download(
        self, remote_name: RemoteName, local: str | BinaryIO, chunk: int = 1 * MiB, verify: bool = True
    ) -> ObjectInfo:
        """Stream a whole object into a path or a binary file object.

        With ``verify`` the bytes are checked against the ETag (the MD5, or the MD5 of the
        parts' MD5s: HEADs find where the parts are) as they arrive; a mismatch is
        :class:`ChecksumMismatch`, retried by the retry policy like any fault on the way (after
        a mismatch, each part's place is asked of S3: parts may only look of one size).
        """
        bucket, key = self._name(remote_name)
        failed_checks = 0  # only fetch() touches it, one call at a time

        def fetch() -> ObjectInfo:
            nonlocal failed_checks
            resp = self.connection.request(
                "GET", bucket, key, headers={"x-amz-checksum-mode": "ENABLED"}, stream=True
            )
            info = ObjectInfo.from_response(key, resp)
            every = failed_checks > 0
            verifier = self._download_verifier(remote_name, info, every) if verify else None
            with resp, _body_errors(remote_name):
                out = open(local, "wb") if isinstance(local, str) else local
                try:
                    if not isinstance(local, str):
                        out.seek(0)
                        out.truncate()
                    offset = 0
                    for block in resp.iter_content(chunk):
                        out.write(block)
                        if verifier is not None:
                            verifier.feed(offset, [block])
                        offset += len(block)
                finally:
                    if isinstance(local, str):
                        out.close()
            if verifier is not None and verifier.state == MISMATCH:
                failed_checks += 1
                raise ChecksumMismatch(key, info.digest, verifier.got)
            return info

        return self.connection.retry.call(fetch, "download %s/%s" % (bucket, key))

    def put(
        self,
        remote_name: RemoteName,
        data: bytes | Callable[[], IO[bytes]],
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """PUT an object from bytes or a factory of fresh file objects; returns its ETag.

        ``if_match`` / ``if_none_match`` make it conditional (S3Error 412 when
        the object is not that version / exists): see :func:`write_conditions`.
        """
        bucket, key = self._name(remote_name)
        out = dict(headers or {})
        out.update(write_conditions(if_match, if_none_match))
        payload_hash = None
        if isinstance(data, (bytes, bytearray, memoryview)):
            if self.checksums and "Content-MD5" not in out and "x-amz-checksum-crc32" not in out:
                out.update(body_checksum(data, self.checksum_algorithm)[0])
            payload_hash = UNSIGNED_PAYLOAD
        resp = self.connection.request("PUT", bucket, key, headers=out, body=data, payload_hash=payload_hash)
        resp.close()
        return resp.headers.get("ETag", "").strip('"')

    def configure_checksums(self, bucket: str) -> str | None:
        """Find out (one probe) whether the server checks and stores ``x-amz-checksum-crc32``,
        on PUT and on multipart uploads; if so, uploads carry it from now on. Returns it or None.

        Writes, then removes, a probe object; about seven requests. A server that accepts a
        wrong CRC32, or loses the right one, keeps ``Content-MD5``.
        """
        name = S3Name(".s3fs-mount-probe-%s" % os.urandom(6).hex(), bucket)
        body = b"checksum probe"
        headers, digest = body_checksum(body, "CRC32")
        try:
            # A wrong CRC32 must be refused: 400 is the expected answer, no failure. A timeout or
            # a 503 is retried as any request is: on a loaded machine one such made every upload
            # of the mount's life carry Content-MD5.
            bucket_name, key = self._name(name)
            resp = self.connection.request(
                "PUT",
                bucket_name,
                key,
                headers={"x-amz-checksum-crc32": "AAAAAA=="},
                body=body,
                payload_hash=UNSIGNED_PAYLOAD,
                expect=(200, 400),
            )
            resp.close()
            if resp.status_code != 400:
                log.info("uploads carry Content-MD5: the server accepts a wrong x-amz-checksum-crc32")
                return None
            self.put(name, body, headers)
            if self.head(name).checksum != digest:
                log.info("uploads carry Content-MD5: the server does not keep x-amz-checksum-crc32")
                return None
            self.checksum_algorithm = "CRC32"
            self.full_object_crc32 = True  # asked for; kept only if the server does it
            try:
                mpu = self.start_multipart(name)
            except S3Error as exc:
                if exc.status != 400:
                    raise
                self.full_object_crc32 = False  # a server that refuses the header
                mpu = self.start_multipart(name)
            try:
                mpu.upload_part(1, body)
                mpu.complete()
            except BaseException:
                mpu.abort()
                raise
            stored = self.head(name).checksum
            if not stored.startswith("CRC32:"):
                self.checksum_algorithm, self.full_object_crc32 = None, False
                log.info("uploads carry Content-MD5: the server loses multipart CRC32s")
                return None
            # One part: a FULL_OBJECT CRC32 is the body's, a composite one has "-1".
            self.full_object_crc32 = stored == digest
            log.info(
                "uploads carry x-amz-checksum-crc32 (the server checks and keeps it; multipart "
                "objects get the CRC32 of %s)",
                "all their bytes" if self.full_object_crc32 else "their parts' CRC32s",
            )
            return "CRC32"
        except RemoteStoreError as exc:
            self.checksum_algorithm, self.full_object_crc32 = None, False
            log.info("uploads carry Content-MD5 (the CRC32 probe failed: %s)", exc)
            return None
        finally:
            try:
                self.remove(name)
            except RemoteStoreError:
                pass

    def _put_probe(self, name: S3Name, body: bytes, headers: Mapping[str, str] | None = None) -> str:
        """PUT a probe object. Refused by S3 (4xx: read-only keys), nothing was written and none is
        removed (a DELETE would be refused too, and logged); failed otherwise, it may have landed
        all the same, and is removed."""
        try:
            return self.put(name, body, headers)
        except Exception as exc:
            if not (isinstance(exc, S3Error) and exc.status < 500):
                self._drop_probe(name)
            raise

    def _drop_probe(self, name: S3Name) -> None:
        """Remove a probe object; one that stays is harmless, and logged."""
        try:
            self.remove(name)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not remove the probe object %s: %s", name.key, exc)

    def probe_conditional_writes(self, bucket: str) -> tuple[bool, bool]:
        """Does the server honour ``If-None-Match: *`` on PUT, and on CompleteMultipartUpload?

        Writes, then removes, a probe object (``.s3fs-mount-probe-<random>``);
        six requests. Servers that ignore the header overwrite the probe
        instead of answering 412.
        """
        name = S3Name(".s3fs-mount-probe-%s" % os.urandom(6).hex(), bucket)
        self._put_probe(name, b"1")
        try:
            try:
                self.put(name, b"2", if_none_match=True)
                on_put = False
            except S3Error as exc:
                if not exc.precondition_failed:
                    raise
                on_put = True
            mpu = self.start_multipart(name)
            try:
                mpu.upload_part(1, b"3")
                mpu.complete(if_none_match=True)
                on_complete = False
            except S3Error as exc:
                if not exc.precondition_failed:
                    raise
                on_complete = True
            finally:
                mpu.abort()
        finally:
            self._drop_probe(name)
        return on_put, on_complete

    def probe_marker_metadata(self, bucket: str, prefix: str = "") -> bool:
        """Does the server keep user metadata on a key that ends in ``/`` (a directory marker)?

        Writes, reads back and removes ``<prefix>.s3fs-mount-probe-<random>/``:
        three requests. SeaweedFS, for one, stores such a key as a directory
        of its own and drops its ``x-amz-meta-*`` headers.
        """
        name = S3Name("%s.s3fs-mount-probe-%s/" % (prefix, os.urandom(6).hex()), bucket)
        self._put_probe(name, b"", {"x-amz-meta-probe": "kept"})
        try:
            return self.head(name).metadata.get("x-amz-meta-probe") == "kept"
        finally:
            self._drop_probe(name)

    def probe_backslash_keys(self, bucket: str, prefix: str = "") -> bool:
        """Does the server keep a ``\\`` in a key as it was given?

        Writes ``<prefix>.s3fs-mount-probe-<random>\\b``, asks whether it is at ``...-<random>/b``
        instead, and removes it: three or four requests. SeaweedFS, for one, stores every
        ``\\`` as ``/``: a file ``a\\b`` would be the file ``b`` in a directory ``a``.
        """
        stem = "%s.s3fs-mount-probe-%s" % (prefix, os.urandom(6).hex())
        name = S3Name(stem + "\\b", bucket)
        rewritten = False
        self._put_probe(name, b"")
        try:
            rewritten, _ = self.exists(S3Name(stem + "/b", bucket))
            return not rewritten
        finally:
            self._drop_probe(name)
            if rewritten:  # the directory the server made of it; it would list for a while
                self._drop_probe(S3Name(stem + "/", bucket))

    def start_multipart(
        self, remote_name: RemoteName, headers: Mapping[str, str] | None = None, checksum: bool = True
    ) -> MultipartUpload:
        """Begin a multipart upload (``headers`` set metadata and content type).

        With ``checksum`` (and a server :meth:`configure_checksums` found able) the upload is
        begun with ``x-amz-checksum-algorithm: CRC32``: each part then carries its CRC32 and the
        object gets S3's composite CRC32. Uploads with copied parts should not ask for it (not
        every server gives a copied part's CRC32).
        """
        bucket, key = self._name(remote_name)
        out = dict(headers or {})
        algorithm = self.checksum_algorithm if checksum and self.checksums else None
        full = bool(algorithm) and self.full_object_crc32
        if algorithm:
            out["x-amz-checksum-algorithm"] = algorithm
        if full:
            out["x-amz-checksum-type"] = "FULL_OBJECT"
        resp = self.connection.request("POST", bucket, key, query={"uploads": ""}, headers=out)
        upload_id = xmlparse.parse_text(resp.content, "UploadId")
        return MultipartUpload(self, bucket, key, upload_id, algorithm, full)

    def upload_file(
        self,
        local_name: str,
        remote_name: RemoteName,
        headers: Mapping[str, str] | None = None,
        size: int | None = None,
    ) -> str:
        """Upload a local file, streaming it, in parallel parts when it is large.

        Never holds more than ``max_workers`` parts in memory. A failed
        multipart upload is aborted, leaving no object and no parts behind.
        Returns the new object's ETag.
        """
        size = os.path.getsize(local_name) if size is None else size
        if size < self.multipart_threshold:  # one read into memory: its bytes get a Content-MD5
            with open(local_name, "rb") as f:
                return self.put(remote_name, f.read(), headers)
        fd = os.open(local_name, os.O_RDONLY)
        try:
            return upload_in_parts(
                self,
                remote_name,
                size,
                self.part_size,
                lambda mpu, n, off, length: mpu.upload_part(n, os.pread(fd, length, off)),
                headers,
            )
        finally:
            os.close(fd)

    def run_parallel(self, jobs: Iterable[Callable[[], object]]) -> None:
        """Run jobs on the part pool, at most ``max_workers`` in flight; first error wins."""
        pending: set[concurrent.futures.Future[object]] = set()
        try:
            for job in jobs:
                if len(pending) >= self.max_workers:
                    done, pending = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for fut in done:
                        fut.result()
                pending.add(self._pool.submit(job))
            for fut in concurrent.futures.as_completed(pending):
                fut.result()
        finally:
            for fut in pending:
                fut.cancel()
            # Jobs already running must end before the caller aborts the upload or
            # closes the file they read: S3 may keep a part still arriving at abort.
            concurrent.futures.wait(pending)

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
    ) -> str:
        """Server-side copy; returns the new ETag.

        With ``replace_metadata`` the destination gets exactly the
        ``x-amz-meta-*`` of ``headers``, and keeps the source's Content-Type
        and other content headers unless ``headers`` overrides them. With
        ``if_match`` the copy happens only if the source still has that ETag
        (else S3Error 412). With ``if_none_match`` it happens only if nothing is at the
        destination (``If-None-Match: *``, else S3Error 412, where the server honours it: AWS,
        SeaweedFS; moto ignores it). Objects over 5 GiB are copied in parts. The
        source is HEADed first unless ``source_info`` is given, or its
        ``size`` (e.g. from a listing) is and nothing else is needed.

        ``on_parts(mpu, False)`` is called once a copy in parts is begun (before its first part),
        ``on_parts(mpu, True)`` once its parts are copied, before its completion: a caller that
        records them can abort an upload a crash left, and recognise the copy a completion that
        landed just before a crash made (:meth:`MultipartUpload.expected_etag`).
        """
        sbucket, skey = self._name(remote_source)
        dbucket, dkey = self._name(remote_destination)
        headers = dict(headers or {})
        info = source_info
        if info is None and (replace_metadata or size is None or size > MAX_SINGLE_COPY):
            info = self.head(remote_source)
        out: dict[str, str] = {}
        if replace_metadata:
            assert info is not None
            out.update(info.headers)
            out.update({k: v for k, v in headers.items()})
            out["x-amz-metadata-directive"] = "REPLACE"
        else:
            out.update({k: v for k, v in headers.items() if not k.lower().startswith(META_PREFIX)})
        source = copy_source(sbucket, skey)
        if info is not None and info.size > MAX_SINGLE_COPY:
            return self._multipart_copy(
                info, source, dbucket, dkey, replace_metadata, out, if_match, on_parts, if_none_match
            )
        out["x-amz-copy-source"] = source
        if if_match:
            out["x-amz-copy-source-if-match"] = '"%s"' % if_match
        if if_none_match:
            out["If-None-Match"] = "*"
        copied = info.size if info is not None else size
        resp = self.connection.request(
            "PUT", dbucket, dkey, headers=out, read_timeout=self.copy_wait(copied or 0)
        )  # a 200 that failed raises
        return xmlparse.parse_text(resp.content, "ETag").strip('"')

    def copy_wait(self, size: int) -> float:
        """Seconds to wait for the answer to a server-side copy of ``size`` bytes: the
        connection's timeout, and the time the copy takes at :data:`COPY_RATE_FLOOR` (a copy
        answers only when done; one of 1 GiB took longer than the 30 s between bytes)."""
        return self.connection.timeout + size / COPY_RATE_FLOOR

    def rename_object(
        self, remote_source: RemoteName, remote_destination: RemoteName, if_match: str | None = None
    ) -> None:
        """RenameObject: the object at ``remote_source`` is at ``remote_destination`` (same bucket),
        atomically, bytes, metadata and ETag as they were; a destination there is replaced.

        With ``if_match`` only if the source still has that ETag (else S3Error 412). Only for a
        server :meth:`probe_rename_object` found able: one that does not know the request may
        take it for a PutObject and put an empty object at the destination.
        """
        sbucket, skey = self._name(remote_source)
        dbucket, dkey = self._name(remote_destination)
        if sbucket != dbucket:
            raise ValueError("RenameObject stays in one bucket: %s -> %s" % (sbucket, dbucket))
        # The client token lets a server that keeps them answer a retried request as the first.
        headers = {
            "x-amz-rename-source": copy_source(sbucket, skey),
            "x-amz-client-token": os.urandom(16).hex(),
        }
        if if_match:
            headers["x-amz-rename-source-if-match"] = '"%s"' % if_match
        self.connection.request("PUT", dbucket, dkey, query={"renameObject": ""}, headers=headers).close()

    def probe_rename_object(self, bucket: str, prefix: str = "") -> bool:
        """Does the server do RenameObject (moves the object; the source is gone)?

        Writes ``<prefix>.s3fs-mount-probe-<random>``, renames it if it is a version it is not
        (which must fail, 412), then as it is, HEADs both names and removes what is left: about
        six requests. A server that does not know RenameObject
        answers an error, or (moto, and any that ignores an unknown sub-resource) takes it
        for a PutObject: an empty object at the new name, the old one still there. False without
        a request when the object options give what is written a class, encryption or an ACL.
        """
        if self.connection.object_options.given_by_writes:
            given = self.connection.object_options.describe()
            log.info("renames copy, then delete: a copy gives the object %s", given)
            return False
        name = "%s.s3fs-mount-probe-%s" % (prefix, os.urandom(6).hex())
        source, destination = S3Name(name, bucket), S3Name(name + "-renamed", bucket)
        body = b"rename probe"
        etag = self._put_probe(source, body)
        try:
            try:
                # Of a version the source no longer is: a server that moves it all the same would
                # let a rename carry off another client's newer version unseen.
                self.rename_object(source, destination, if_match="0" * 32)
                log.info("renames copy, then delete: RenameObject ignores x-amz-rename-source-if-match")
                return False
            except S3Error as exc:
                if not exc.precondition_failed:
                    log.info("renames copy, then delete: the server answered RenameObject with %s", exc.code)
                    return False
            try:
                self.rename_object(source, destination, if_match=etag)
            except S3Error as exc:
                log.info("renames copy, then delete: the server answered RenameObject with %s", exc.code)
                return False
            moved = self.head(destination)
            kept, _ = self.exists(source)
            if kept or moved.size != len(body) or moved.etag != etag:
                log.info("renames copy, then delete: the server does not move an object by RenameObject")
                return False
            return True
        finally:
            self._drop_probe(source)
            self._drop_probe(destination)

    def _multipart_copy(
        self,
        info: ObjectInfo,
        source: str,
        bucket: str,
        key: str,
        replace_metadata: bool,
        headers: dict[str, str],
        if_match: str | None,
        on_parts: Callable[[MultipartUpload, bool], None] | None,
        if_none_match: bool = False,
    ) -> str:
        """:meth:`copy_object` of an object over :data:`MAX_SINGLE_COPY`: UploadPartCopy of each
        part (each conditional on ``if_match``), then the completion (conditional on nothing
        being at the destination with ``if_none_match``)."""
        create = {k: v for k, v in headers.items() if not k.lower().startswith("x-amz-metadata")}
        if not replace_metadata:
            create.update(info.headers)
            create.update(info.metadata)
        mpu = self.start_multipart(S3Name(key, bucket=bucket), create)
        part = part_size_for(info.size, COPY_PART)
        try:
            if on_parts is not None:
                on_parts(mpu, False)
            self.run_parallel(
                (lambda n=n, off=off: mpu.copy_part(n, source, off, min(off + part, info.size) - 1, if_match))
                for n, off in enumerate(range(0, info.size, part), start=1)
            )
            if on_parts is not None:
                on_parts(mpu, True)
            return mpu.complete(if_none_match=if_none_match)
        except BaseException:
            mpu.abort()
            raise

    # -- listing and bulk --------------------------------------------------------

    def list(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        bucket: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> Iterator[ListPage]:
        """ListObjectsV2, page by page (``encoding-type=url`` so any key round-trips)."""
        bucket = bucket or self.connection.default_bucket
        if not bucket:
            raise ValueError("no bucket to list: give bucket= or a default_bucket")
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            elif start_after:
                query["start-after"] = start_after
            resp = self.connection.request("GET", bucket, "", query=query)
            page = xmlparse.parse_list_v2(resp.content)
            yield page
            if not page.truncated or not page.continuation:
                return
            token = page.continuation

    def list_all(self, prefix: str = "", bucket: str | None = None) -> Iterator[ListEntry]:
        """Every object under ``prefix``, recursively (no delimiter)."""
        for page in self.list(prefix, delimiter=None, bucket=bucket):
            yield from page.entries

    def delete_keys(self, keys: Iterable[str], bucket: str | None = None,
                    etags: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """DeleteObjects in batches of 1000; returns ``[(key, error code)]`` of failures.

        A key with an ETag in ``etags`` is deleted only if S3 still has that version: another
        client's newer one stays, and its failure is ``PreconditionFailed`` (AWS, SeaweedFS;
        a server that ignores the condition deletes it, as it would without).

        Keys go deepest first (reverse order), so a server that keeps
        directories (SeaweedFS) sees each emptied before it is removed. A key
        the server could not delete for a passing reason (``InternalError``,
        ``SlowDown``: the retry policy's codes) is sent again, by the retry
        policy, with the others of its batch that failed so; what still fails
        is returned. A key that was not there is no failure.
        """
        keys = sorted(keys, reverse=True)
        bucket = bucket or self.connection.default_bucket
        failed: list[tuple[str, str]] = []
        for start in range(0, len(keys), 1000):
            failed.extend(self._delete_batch(keys[start : start + 1000], bucket, etags or {}))
        return failed

    def _delete_batch(self, keys: list[str], bucket: str, etags: Mapping[str, str]) -> list[tuple[str, str]]:
        """One DeleteObjects of at most 1000 keys, its passing per-key failures retried."""
        left = list(keys)
        failed: list[tuple[str, str]] = []  # for good: no retry will help

        def attempt() -> None:
            body = xmlparse.delete_objects_body(left, etags)
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # SeaweedFS checks it
            resp = self.connection.request(
                "POST",
                bucket,
                "",
                query={"delete": ""},
                headers={"Content-MD5": md5},
                body=body,
                retry=False,
            )
            again: list[tuple[str, str]] = []
            for key, code in xmlparse.parse_delete_errors(resp.content):
                if code in RETRYABLE_CODES:
                    again.append((key, code))
                elif code != "NoSuchKey":
                    failed.append((key, code))
            if again:
                left[:] = [key for key, _ in again]
                raise _KeysNotDeleted(again)

        try:
            self.connection.retry.call(attempt, "delete of %d keys in %s" % (len(keys), bucket))
        except _KeysNotDeleted as exc:
            failed.extend(exc.keys)
        return failed

    def list_multipart_uploads(self, prefix: str = "", bucket: str | None = None) -> list[tuple[str, str]]:
        """``[(key, upload_id)]`` of unfinished multipart uploads under ``prefix``."""
        bucket = bucket or self.connection.default_bucket
        out: list[tuple[str, str]] = []
        query = {"uploads": "", "prefix": prefix}
        while True:
            resp = self.connection.request("GET", bucket, "", query=query)
            uploads, key_marker, id_marker = xmlparse.parse_uploads(resp.content)
            out.extend(uploads)
            if not key_marker:
                return out
            query = {
                "uploads": "",
                "prefix": prefix,
                "key-marker": key_marker,
                "upload-id-marker": id_marker or "",
            }

    def resume_multipart(
        self,
        remote_name: RemoteName,
        upload_id: str,
        parts: Mapping[int, str],
        crc32: Mapping[int, str] | None = None,
        algorithm: str | None = None,
    ) -> MultipartUpload:
        """The multipart upload ``upload_id`` begun earlier (by another process, say), whose
        ``parts`` (number -> ETag; ``crc32``: number -> its x-amz-checksum-crc32, when begun with
        ``algorithm``) were sent: more parts may be sent, then it completes. No request is sent
        here; a gone upload fails on the first (S3Error NoSuchUpload).
        """
        bucket, key = self._name(remote_name)
        mpu = MultipartUpload(self, bucket, key, upload_id, algorithm)
        mpu.parts.update(parts)
        mpu.crc32.update(crc32 or {})
        return mpu

    def abort_multipart(self, key: str, upload_id: str, bucket: str | None = None) -> bool:
        """Abort one multipart upload by id; False (logged) when that failed."""
        bucket = bucket or self.connection.default_bucket or ""
        return MultipartUpload(self, bucket, key, upload_id).abort()

    # -- buckets ---------------------------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        """Create a bucket; an existing one of ours is fine."""
        try:
            self.connection.request("PUT", bucket, "", expect=(200,))
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def delete_bucket(self, bucket: str) -> None:
        """Delete an (empty) bucket."""
        self.connection.request("DELETE", bucket, "", expect=(204, 200))

    def bucket_exists(self, bucket: str) -> bool:
        """HEAD the bucket: True if it is there and ours to use."""
        try:
            self.connection.request("HEAD", bucket, "").close()
            return True
        except S3Error as exc:
            if exc.not_found:
                return False
            raise
