"""Uploading staged files: whole, in parallel parts, or streamed while written.

A file written from its start (a new file, or one opened with O_TRUNC) that
grows past the multipart threshold starts a multipart upload at once; each
part is sent, in the background, as soon as the writer has filled it, so
close waits only for the tail. A write behind what was already sent, or a
truncate, or a part that fails, abandons the stream (one log line says why,
:meth:`Uploader.abandon`) and the close uploads the file whole. A write let by
while its part was not yet under way that lands on it once it is (another
writer of the file filled it meanwhile) makes that part go again at the close
(:meth:`Uploader.before_write`); a file uploaded whole mid-write streams on.

**Larger than the cache.** When the cache has no room for the next write, the
parts already in S3 are released from the staged file (punched out, recorded
first: :meth:`StagedFile.release <s3fs_mount.fs.staging.StagedFile.release>`),
and the writer waits for parts under way until there is room: the cache
holds at most ``cache_size`` however large the file. Released bytes are in S3
only as parts of the uncompleted upload, so that upload is never abandoned: a
write behind the stream, a truncate, or a read of released bytes first
completes it (a checkpoint: the object then holds the file so far, and the
item is a staged copy of it whose missing bytes come from S3, see
:meth:`Uploader.checkpoint_needed`); a part that fails is sent again at the
close; a clobber keeps theirs under the conflict name and puts ours at the
path (ours cannot go anywhere else: its parts belong to the path's upload);
after a crash the next mount finishes the upload from the record
(:meth:`Uploader.resume`).

An fsync (or ``s3fs-mount sync``) in the middle of such a write completes
the stream, so what was written is in S3, and remembers that the object
now holds the file's first bytes (:class:`StreamBase`). The next write
starts a new stream whose first parts are server-side copies of those bytes
(UploadPartCopy, conditional on that version), so a sync never makes the
bytes already sent go up again: only the last, partial part is re-sent.

**Between clients, no silent lost update.** Every upload is conditional on
the version this mount last saw (``If-Match`` with the ETag our bytes came
from; ``If-None-Match: *`` for a file we created) where the server honours
it (probed at mount, :meth:`RemoteStore.probe_conditional_writes`), else a
HEAD just before the upload compares ETags. When the object changed, ours
goes to ``KEY.conflict-TIMESTAMP``, theirs stays, one log line names both
ETags, and :class:`~s3fs_mount.fs.errors.Conflict` tells the caller. But a
file changed by nothing but appends (O_APPEND writes past the end of the
version it was) has them added to theirs: their version is fetched, checked
as a reader's bytes are (:meth:`Prefetcher.fetch_version
<s3fs_mount.fs.prefetch.Prefetcher.fetch_version>`), our appended bytes go
after it, and the upload goes again, conditional on theirs
(:meth:`Uploader._append_onto_theirs`), as O_APPEND lands each write at the
current end on one disk; one log line says so.
Another client's metadata-only change keeps the ETag, so no condition tells
of it: an upload that replaces an object asks S3 first (one HEAD, just before
the PUT or the multipart completion, :meth:`Uploader._learn_theirs`) and
merges their change into ours (:func:`~s3fs_mount.fs.attrs.merge_metadata`),
one log line naming what was merged or overridden.

Multipart upload ids are recorded in the item's record, so uploads a crash
interrupted are aborted at the next mount.

What an upload keeps of an item (its stream, its progress, its last error)
is an :class:`UploadState`, owned by the :class:`Uploader` and touched by
nothing else; the item itself changes only through its methods.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import logging
import os
import queue
import random
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from s3fs_mount.fs.attrs import ATIME, CTIME, MTIME, check_metadata_size, time_metadata
from s3fs_mount.fs.budget import BufferPool, ByteBudget
from s3fs_mount.fs.copies import PendingCopies
from s3fs_mount.fs.errors import Conflict, Corrupt
from s3fs_mount.fs.paths import NAME_MAX
from s3fs_mount.fs.staging import StagedFile, StagingCache
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import (
    body_checksum,
    composite,
    crc32,
    crc32_checksum,
    same_bytes,
    whole,
)
from s3fs_mount.s3.errors import RemoteStoreError, S3Error, TransportError
from s3fs_mount.s3.keepalive import FileSpan
from s3fs_mount.s3.parts import PartLayout, part_size_for, streaming_layout
from s3fs_mount.s3.retry import is_retryable
from s3fs_mount.s3.store import MultipartUpload, ObjectInfo, metadata_of, upload_in_parts

log = logging.getLogger(__name__)

#: Tests set this to kill the mount right after an upload, before its record is cleared.
CRASH_AFTER_UPLOAD = os.environ.get("S3FS_MOUNT_TEST_CRASH_AFTER_UPLOAD") == "1"
#: Tests set this to ``OFFSET:PATH``: a write at OFFSET, once :meth:`Uploader.before_write` let it
#: by, waits until PATH exists (:func:`hold_at_write_gate`), so that other writes overtake it.
WRITE_GATE = os.environ.get("S3FS_MOUNT_TEST_WRITE_GATE", "")
#: Tests set this to ``KEY:PATH``: an upload of KEY, once in S3 and its copy marked clean, waits
#: until PATH exists (:func:`hold_at_upload_gate`), so that a stat comes in between.
UPLOAD_GATE = os.environ.get("S3FS_MOUNT_TEST_UPLOAD_GATE", "")
#: Rounds of sending again the parts of a stream written over while they went up, at its end.
RESENDS = 3
#: Uploads again, in a row, of a closed file changed while its background upload ran.
WRITEBACK_AGAIN = 5
#: Seconds before a failed background upload is first tried again, and the most between tries.
AGAIN_FIRST, AGAIN_MOST = 2.0, 30.0
#: Conflict names tried, one after another, when S3 already has an object at each.
CONFLICT_NAMES = 20
#: Versions of another client's a file dirty by appends alone is added to, one after another,
#: while each is replaced before our upload lands on it (then: a conflict copy, as any write).
#: Two mounts appending to one log at once: 8 tries, without a pause, were spent 4 times in 200
#: closes (round 37), each mount's next append landing while the other added its own.
APPEND_TRIES = 30
#: Seconds of the longest pause before adding our appends to another version again: a random
#: one, up to this much (at most APPEND_PAUSE_MOST), times the tries so far, so that two mounts
#: that keep replacing each other's version get out of step.
APPEND_PAUSE, APPEND_PAUSE_MOST = 0.005, 0.1
#: Fetches of another client's version whose bytes failed their check, in a row, before our
#: appends go to a conflict copy instead (a byte changed on the way: fetched again, as a read
#: again is).
APPEND_CHECK_TRIES = 2
#: The largest version of another client's that our appends are added to: it is read into
#: memory whole (a larger one: a conflict copy, as any write).
APPEND_ONTO_MOST = 64 << 20
#: How uploads guard against replacing another client's version (see the module docstring).
CHECK_CONDITIONAL, CHECK_HEAD, CHECK_OFF = "conditional", "head", "off"


@dataclass
class StreamBase:
    """S3's version ``etag`` of the item holds its first ``length`` bytes, as whole parts
    of ``layout``.

    Left by a stream completed mid-write (fsync); the next stream copies these
    bytes server-side instead of sending them again.
    """

    etag: str  # GUARDED_BY(its UploadState.lock): a self-copy after the stream moves it on
    length: int  # immutable
    layout: PartLayout  # immutable


@dataclass
class StreamingUpload:
    """A multipart upload fed part by part. Every field is GUARDED_BY(its UploadState.lock)
    once the stream is published in ``UploadState.stream``.

    Its first ``copied_parts`` parts copy the first ``copied`` bytes (whole parts of
    ``layout``) from a :class:`StreamBase`; the rest are the file's bytes from there on,
    sized by ``layout``: part ``n`` is the layout's part ``n + skipped``.
    """

    mpu: MultipartUpload
    layout: PartLayout
    headers: dict[str, str]
    copied: int = 0
    copied_parts: int = 0
    skipped: int = 0  # layout parts the copied parts stand for, less their number
    next_part: int = 1  # the first part not yet submitted
    #: Part number -> its send (or copy), done or under way.
    futures: dict[int, concurrent.futures.Future[str]] = field(default_factory=dict)
    #: Parts whose bytes were released from the staged file (their ETags recorded in its record).
    released: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Parts written over after they were submitted (their bytes read, or about to be: what
    #: S3 gets may be the old bytes, or bytes that fail their CRC32): each goes again.
    stale: set[int] = field(default_factory=set)

    def submitted_within(self, start: int, end: int) -> range:
        """The numbers of the parts submitted (not copied) that hold bytes of ``[start, end)``."""
        sent = self.sent_until
        if start >= sent or end <= start:
            return range(0)
        first = max(self.layout.number_at(start) - self.skipped, self.copied_parts + 1)
        last = self.layout.number_at(min(end, sent) - 1) - self.skipped
        return range(first, last + 1)

    @property
    def sent_until(self) -> int:
        return self.layout.start(self.next_part + self.skipped)

    def part_length(self, number: int) -> int:
        """The size of part ``number`` unless it is the object's last."""
        return self.layout.size(number + self.skipped)

    def part_start(self, number: int) -> int:
        """The offset of part ``number``'s first byte."""
        return self.layout.start(number + self.skipped)

    def record(self) -> dict[str, Any]:
        """What the item's record keeps of this upload: enough to finish it after a crash."""
        return {
            "upload_id": self.mpu.upload_id,
            "algorithm": self.mpu.algorithm,
            "base": self.layout.base,
            "per_step": self.layout.per_step,
            "parts": [[n, etag, crc] for n, (etag, crc) in sorted(self.released.items())],
        }


class WrittenCRCs:
    """CRC32s of a file's parts (by ``layout``) made from its bytes as they were written, each
    write following the last from the file's first byte.

    A part whose CRC32 is here goes up from the staged file (``sendfile``), its bytes never read
    into memory; the server checks them against the CRC32 of what the writer wrote. A write
    anywhere else (behind, over, or past the last one) ends it: the parts are then read and
    checked as they are sent. Not thread-safe: its owner's lock guards it.
    """

    def __init__(self, layout: PartLayout) -> None:
        self.layout = layout  # immutable
        self.at = 0  # the bytes written in order so far
        self.number = 1  # the part ``at`` is in
        self.value = 0  # the CRC32 of part ``number``'s bytes before ``at``
        self.done: dict[int, int] = {}  # part number -> its CRC32, until sent
        self.off = False

    def wrote(self, offset: int, data: bytes | memoryview) -> None:
        """``data`` was written at ``offset``."""
        if self.off:
            return
        if offset != self.at:
            self.stop()
            return
        view = memoryview(data)
        while len(view):
            end = self.layout.start(self.number + 1)
            piece = view[: end - self.at]
            self.value = crc32(piece, self.value)
            self.at += len(piece)
            view = view[len(piece) :]
            if self.at == end:
                self.done[self.number] = self.value
                self.number, self.value = self.number + 1, 0

    def take(self, number: int) -> int | None:
        """The CRC32 of part ``number`` as written (None if not known); each is given once."""
        return self.done.pop(number, None)

    def stop(self) -> None:
        """Count no more (the file's bytes are no longer the writes in order): forget all."""
        self.off = True
        self.done.clear()


class UploadState:
    """What the upload unit keeps of one item; only :class:`Uploader` reads or writes it.

    Locks: ``upload_lock`` (one upload of the item at a time, held across its requests)
    is taken before ``lock``, and both before any of the item's own locks (see
    :mod:`s3fs_mount.fs.staging`); no request is sent while ``lock`` is held.
    """

    def __init__(self) -> None:
        self.upload_lock = threading.Lock()  # immutable after __init__
        self.lock = threading.Lock()  # immutable after __init__
        #: GUARDED_BY(lock): the multipart upload fed while the file is written, or the bytes a
        #: completed one left in S3 to stream on from, or None.
        self.stream: StreamingUpload | StreamBase | None = None
        #: GUARDED_BY(lock): streaming failed to start: upload whole at close, don't try again
        #: (until the stream is abandoned).
        self.stream_off = False
        self.uploaded_bytes = 0  # GUARDED_BY(lock): progress of the upload under way, or the last
        self.error = ""  # GUARDED_BY(lock): why the last upload failed ("" when it did not)
        self.failed_at = 0.0  # GUARDED_BY(lock): time.monotonic() of that failure (0.0: none)
        #: GUARDED_BY(lock): the CRC32s of the parts of a file written in order from its first
        #: byte, for its stream (None: not being written so).
        self.written: WrittenCRCs | None = None
        #: GUARDED_BY(lock): ``[start, end)`` of each write between :meth:`Uploader.before_write`
        #: and :meth:`Uploader.done_writing`: its bytes may land in the staged file at any time.
        self.writing: list[tuple[int, int]] = []
        #: GUARDED_BY(lock): the upload under way, a stream, may lack bytes written before it
        #: began (see :meth:`Uploader._finish_stream`): the item stays dirty.
        self.missed = False
        #: GUARDED_BY(lock): what S3 holds after the upload under way, a whole file in parts of a
        #: stream's layout: once the file is clean, the next write streams on from it.
        self.whole_base: StreamBase | None = None
        #: GUARDED_BY(lock): removals of the item's file under way (:meth:`Uploader.removing`):
        #: its upload sends no further request.
        self.removing = 0
        #: GUARDED_BY(lock): the upload under way merged another client's metadata change
        #: (:meth:`Uploader._learn_theirs`) that its multipart upload, begun before, lacks.
        self.merged = False
        #: GUARDED_BY(lock): the x-amz-meta-* the upload under way stored (None: not known).
        self.sent_metadata: dict[str, str] | None = None
        #: GUARDED_BY(lock): (ETag, bytes, whole-object digest) of the version the item's last
        #: upload stored, when S3's digest of all its bytes is known (a FULL_OBJECT CRC32): what
        #: tells another client's metadata copy of it (a new ETag on AWS) from new bytes.
        self.stored: tuple[str, int, str] = ("", 0, "")


class Uploader:
    """Puts staged files into S3.

    :param store: the bucket of every item.
    :param part_size: bytes per part (grown when a file would need > 10,000; a stream's
        double every ``part_doubling`` parts, see :mod:`s3fs_mount.s3.parts`).
    :param threshold: files of at least this size upload in parts.
    :param workers: parts in flight at once, over all files.
    :param staging: the cache, to move an item to its conflict name.
    :param part_doubling: parts between doublings of a stream's part size (0: the most that
        still let 10,000 parts hold 5 TiB).
    :param memory: part bytes read into memory at once, over all uploads (a larger part
        goes alone).
    :param refill: fetches a dirty item's holes (:meth:`StagedFile.holes`) from S3.
    :param on_stored: told that S3 now holds an item's content, clean, while it still counts
        as uploading (what a stat shows of it comes from the staged copy until this returns).
    :param digest_of: the digest S3 told (a HEAD) for version ``(key, etag)``, '' if not known.
    :param fetch_version: ``(key, etag, size, digest)`` -> all the bytes of that version, checked
        as a reader's are (:meth:`Prefetcher.fetch_version
        <s3fs_mount.fs.prefetch.Prefetcher.fetch_version>`: :class:`Corrupt` if they do not
        match what S3 stored), for our appends to go after (:meth:`_append_onto_theirs`).
        None: they never do (a conflict copy, as for any write).
    """

    def __init__(
        self,
        store: Bucket,
        part_size: int,
        threshold: int,
        workers: int = 8,
        staging: StagingCache | None = None,
        part_doubling: int = 0,
        memory: int = 64 << 20,
        refill: Callable[[StagedFile], None] | None = None,
        on_stored: Callable[[StagedFile], None] | None = None,
        digest_of: Callable[[str, str], str] | None = None,
        fetch_version: Callable[[str, str, int, str], bytes] | None = None,
    ) -> None:
        # Every field is immutable after __init__ but put_check and complete_check (set once,
        # by configure_checks at mount, before any upload) and _states (see there).
        self.store = store
        self.part_size = part_size
        #: The part sizes of every upload streamed while written.
        self.stream_layout = streaming_layout(part_size, part_doubling)
        self.threshold = max(threshold, part_size)
        self.staging = staging
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, "s3-upload")
        #: Called with a file's key before its upload: the directories above it are in S3
        #: (fs/newdirs.py; set once by Mutations, before any upload).
        self.before_put: Callable[[str], None] = lambda key: None
        self._slots = threading.BoundedSemaphore(workers * 2)  # parts queued: back-pressure
        #: Bytes of parts in memory (read, being sent): streams' parts grow, and many files stream at once.
        self.memory = ByteBudget(memory)
        #: The parts' buffers, used again part after part (as many bytes as ``memory`` kept).
        self.buffers = BufferPool(memory)
        self.refill = refill
        self.on_stored = on_stored
        self.digest_of = digest_of
        self.fetch_version = fetch_version
        #: Copies in parts under way (this uploader's and the mount's other ones: fs/copies.py),
        #: recorded so that the next mount aborts them; one journal in the cache directory.
        self.copies = PendingCopies(staging.root if staging is not None else None)
        #: How PUTs and completes are guarded (CHECK_*); per kind of write, set once at mount.
        self.put_check = CHECK_HEAD
        self.complete_check = CHECK_HEAD
        #: GUARDED_BY(_states_lock): each item's UploadState, gone with the item.
        self._states: weakref.WeakKeyDictionary[StagedFile, UploadState] = weakref.WeakKeyDictionary()
        self._states_lock = threading.Lock()
        #: GUARDED_BY(_states_lock): does the server give a copied part (UploadPartCopy) the MD5
        #: of its bytes as ETag, as it does an uploaded part (None: not seen yet)? See _check_copy.
        self._copies_checkable: bool | None = None
        #: GUARDED_BY(_states_lock): False once the server gave no CRC32 for a copied part: the
        #: streams that copy then go without checksums.
        self._copies_crc = True

    def _state(self, item: StagedFile) -> UploadState:
        with self._states_lock:
            state = self._states.get(item)
            if state is None:
                state = self._states[item] = UploadState()
            return state

    def progress(self, item: StagedFile) -> tuple[int, str, float]:
        """``(bytes sent, error, when it failed)`` of the item's upload under way, or of its
        last one (the time: ``time.monotonic()``, 0.0 when it did not fail)."""
        state = self._state(item)
        with state.lock:
            return state.uploaded_bytes, state.error, state.failed_at

    def _sent(self, item: StagedFile, nbytes: int) -> None:
        state = self._state(item)
        with state.lock:
            state.uploaded_bytes += nbytes

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def configure_checks(self, enabled: bool, say_refusal: bool = True) -> S3Error | None:
        """Find out (with one probe) how this server lets uploads be conditional; log what is used.
        Returns S3's refusal when it would not let the probe write (403: keys that may only read),
        logged here unless not ``say_refusal`` (the caller says it)."""
        if not enabled:
            self.put_check = self.complete_check = CHECK_OFF
            log.warning("conflict check off: an upload may replace another client's newer version")
            return None
        refused = None
        try:
            on_put, on_complete = self.store.probe_conditional_writes()
        except Exception as exc:
            if isinstance(exc, S3Error) and exc.access_denied:
                refused = exc
            if refused is None or say_refusal:
                log.warning("could not probe conditional writes (%s): a HEAD before each upload checks", exc)
            on_put = on_complete = False
        self.put_check = CHECK_CONDITIONAL if on_put else CHECK_HEAD
        self.complete_check = CHECK_CONDITIONAL if on_complete else CHECK_HEAD
        log.info(
            "conflict check: PUT by %s, multipart complete by %s",
            "If-Match/If-None-Match" if on_put else "a HEAD before it",
            "If-Match/If-None-Match" if on_complete else "a HEAD before it",
        )
        return refused

    def configure_checksums(self) -> None:
        """Find out (one probe) whether uploads may carry ``x-amz-checksum-crc32`` here (else Content-MD5)."""
        self.store.configure_checksums()

    def headers(self, item: StagedFile, with_times: bool = True) -> dict[str, str]:
        """The headers an upload of ``item`` carries: content headers, metadata, its times.

        FsError E2BIG when their user metadata is over S3's limit (the POSIX keys added to
        attributes another client stored can take it there): the upload is refused before any
        request, the item stays dirty until an attribute is removed.
        """
        view = item.view()
        out = dict(view.headers)
        out.update(view.metadata)
        if with_times:
            out.update(time_metadata(view.mtime, view.atime, view.ctime))
        else:
            for name in (MTIME, ATIME, CTIME):
                out.pop(name, None)
        check_metadata_size(out)
        return out

    def stored_digest(self, item: StagedFile, etag: str) -> str:
        """The whole-object digest S3 keeps for version ``etag``, if this mount's upload of the
        item stored it ('' if not known)."""
        state = self._state(item)
        with state.lock:
            stored_etag, _, digest = state.stored
        return digest if etag and etag == stored_etag else ""

    def _note_stored(self, item: StagedFile, etag: str, size: int, digest: str) -> None:
        """S3 holds the item's upload as version ``etag`` (``size`` bytes), whose bytes hash to
        ``digest`` (a whole-object one, or '' when not known)."""
        state = self._state(item)
        with state.lock:
            state.stored = (etag, size, digest if whole(digest) else "")

    def _same_bytes(self, item: StagedFile, replaces: str, current: ObjectInfo) -> bool:
        """Is S3's ``current`` version (a new ETag) version ``replaces``'s bytes under other
        metadata: the same size and whole-object digest (:func:`~s3fs_mount.s3.checksums.same_bytes`)?
        The digest of ``replaces`` is known when this mount stored it, or looked it up (a HEAD)."""
        state = self._state(item)
        with state.lock:
            stored_etag, size, digest = state.stored
        if stored_etag != replaces:
            digest = self.digest_of(item.key, replaces) if self.digest_of is not None else ""
            size = item.view().remote_size
        return same_bytes(size, digest, current.size, current.digest)

    def etags_of(self, item: StagedFile) -> set[str]:
        """The ETags S3 would give the item's content: single PUT, or our multipart layouts."""
        size = os.fstat(item.fd).st_size
        whole = hashlib.md5()
        etags = set()
        for layout in {PartLayout(part_size_for(size, self.part_size)), self.stream_layout}:
            digests = []
            for _, off, length in layout.spans(size):
                digest = hashlib.md5()
                for sub in range(off, off + length, 1 << 20):
                    digest.update(os.pread(item.fd, min(1 << 20, off + length - sub), sub))
                digests.append(digest.digest())
            etags.add(composite(digests))
        for off in range(0, size, 1 << 20):
            whole.update(os.pread(item.fd, 1 << 20, off))
        etags.add(whole.hexdigest())
        return etags

    # -- streaming while written ----------------------------------------------------

    def checkpoint_needed(self, item: StagedFile, offset: int) -> bool:
        """Must the item's upload complete before a write at ``offset`` (or a truncate to it)?
        True when it lands behind a stream that holds bytes released from the cache: that
        stream cannot be abandoned, and its parts would contradict the write."""
        state = self._state(item)
        with state.lock:
            stream = state.stream
            behind = isinstance(stream, StreamingUpload) and offset < stream.sent_until
        return behind and item.has_released()

    def before_write(self, item: StagedFile, offset: int, length: int = 0) -> None:
        """A write of ``length`` bytes is coming at ``offset``: abandon a stream (or base) it would
        contradict (the caller has made a checkpoint first where :meth:`checkpoint_needed`), and
        make room in the cache for it (:meth:`_make_room`).

        From here until :meth:`done_writing` the write is *in progress*: its bytes may land at any
        moment, also on a part submitted meanwhile (by another writer): such a part is sent
        again (:meth:`after_write`), is not released from the cache, and an upload completed
        while the write is in progress leaves the file dirty (:meth:`_finish_stream`).
        """
        state = self._state(item)
        with state.lock:
            state.writing.append((offset, offset + length))
            stream = state.stream
            if isinstance(stream, StreamBase) and offset < stream.length:
                state.stream = None  # S3's first bytes will not be the file's: nothing to stream on from
            behind = isinstance(stream, StreamingUpload) and offset < stream.sent_until
            sent = stream.sent_until if isinstance(stream, StreamingUpload) else 0
        try:
            if behind:
                self.abandon(item, "a write at %d, behind the %d bytes streamed" % (offset, sent))
            self._make_room(item, length)
        except BaseException:
            self.done_writing(item, offset, length)  # the caller's write does not happen
            raise

    def done_writing(self, item: StagedFile, offset: int, length: int = 0) -> None:
        """The write :meth:`before_write` announced is over (its bytes landed, or it failed)."""
        state = self._state(item)
        with state.lock:
            state.writing.remove((offset, offset + length))

    def _make_room(self, item: StagedFile, incoming: int) -> None:
        """Keep the cache within its size for ``incoming`` more bytes: clean files are evicted,
        then the parts of the item's stream already in S3 are released from its staged file, and
        while that is not enough, the writer waits for the parts under way.

        A stream that copied its first parts from S3 releases nothing (its first bytes are local
        on purpose); nor does a file that is not streamed: the cache then runs over.
        """
        cache = self.staging or item.cache
        if not cache.needs_room(incoming):
            return
        state = self._state(item)
        while True:
            with state.lock:
                stream = state.stream
                if not isinstance(stream, StreamingUpload) or stream.copied:
                    return
                done = {
                    n: f
                    for n, f in stream.futures.items()
                    if n not in stream.released and f.done() and not f.cancelled() and f.exception() is None
                }
                pending = [f for f in stream.futures.values() if not f.done()]
            if done:
                ranges = []
                with state.lock:
                    for n, f in sorted(done.items()):
                        if not self._releasable(state, stream, n, f):
                            continue
                        stream.released[n] = (f.result(), stream.mpu.crc32.get(n, ""))
                        start = stream.part_start(n)
                        ranges.append((start, start + stream.part_length(n)))
                    record = stream.record()
                if ranges:
                    item.release(ranges, record)
                if not cache.needs_room(incoming):
                    return
            if not pending:
                return  # nothing more to free: the cache runs over (a part bigger than the cache?)
            concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)

    @staticmethod
    def _releasable(
        state: UploadState, stream: StreamingUpload, number: int, fut: concurrent.futures.Future[str]
    ) -> bool:
        """May part ``number``, sent by ``fut``, leave the cache? Not if it must go again, nor while
        a write in progress may land on it (caller holds ``state.lock``)."""
        if stream.futures.get(number) is not fut or number in stream.stale:
            return False
        start = stream.part_start(number)
        end = start + stream.part_length(number)
        return not any(s < end and start < e for s, e in state.writing)

    def after_write(
        self, item: StagedFile, offset: int | None = None, data: bytes | memoryview | None = None
    ) -> None:
        """Send any part the writer has now filled, if the file is being written from scratch.

        ``data``, written at ``offset`` (None: not known, as for an append), goes toward the
        CRC32s of the parts of a file written in order from its first byte (:class:`WrittenCRCs`).
        """
        state = self._state(item)
        view = item.view()
        with state.lock:
            if data is not None and offset == 0 and view.size == len(data) and self._crc_parts():
                state.written = WrittenCRCs(self.stream_layout)  # the file is this write: begin
            if state.written is not None:
                if data is None or offset is None:
                    state.written.stop()
                else:
                    state.written.wrote(offset, data)
            if data is not None and offset is not None:
                self._written_over(state, offset, offset + len(data))
            stream = state.stream
            if view.size < self.threshold or view.uploading or state.stream_off:
                return
            if stream is None and view.remote_size:
                return  # not written from its start: uploaded whole at close
        if stream is None or isinstance(stream, StreamBase):
            try:
                stream = self._start_stream(item, stream)
            except Exception as exc:  # the bytes are staged: close uploads them whole
                log.warning("%s: could not start a streamed upload (%s); uploading at close", item.key, exc)
                with state.lock:
                    state.stream_off = True
                return
            if stream is None:
                return
        while True:
            with state.lock:
                if state.stream is not stream:
                    return
                start = stream.sent_until
                number = stream.next_part
                length = stream.part_length(number)
                if not item.covers(start, start + length):
                    return
                cause = stream.mpu.gave_up()
                if cause is not None:
                    # A part failed for good: no part more (the flush sends the rest, or the file
                    # whole). But a stream whose bytes the cache released goes on after a failure
                    # that may pass (it cannot be sent whole, and the cache needs the room), once
                    # its parts under way have ended.
                    if not (is_retryable(cause) and item.has_released()):
                        return
                    if any(not f.done() for f in stream.futures.values()):
                        return
                    stream.mpu.send_again()
                stream.next_part += 1
                crc = None
                if state.written is not None:
                    if stream.copied or stream.layout != state.written.layout:
                        state.written.stop()  # its parts are not the layout's from the first byte
                    crc = state.written.take(number)
            self._slots.acquire()  # back-pressure: the writer waits for the network
            fut = self.pool.submit(self._send_part, item, stream.mpu, number, start, length, True, crc)
            with state.lock:
                stream.futures[number] = fut

    @staticmethod
    def _written_over(state: UploadState, start: int, end: int) -> None:
        """Bytes ``[start, end)`` landed (caller holds ``state.lock``). Where they fell on a part
        submitted after :meth:`before_write` let them by (another writer filled it meanwhile),
        what went up may be the old bytes: that part goes again. A base they fell on no longer
        holds the file's first bytes."""
        stream = state.stream
        if isinstance(stream, StreamBase):
            if start < stream.length:
                state.stream = None
        elif isinstance(stream, StreamingUpload):
            stale = stream.submitted_within(start, end)
            if stale:
                log.info(
                    "%s: a write at %d landed on part(s) %d-%d already under way: sent again",
                    stream.mpu.key,
                    start,
                    stale[0],
                    stale[-1],
                )
                stream.stale.update(stale)

    def _start_stream(self, item: StagedFile, base: StreamBase | None) -> StreamingUpload | None:
        """Begin a stream; from ``base``, its first parts are copies of what S3 already has."""
        state = self._state(item)
        view = item.view()
        with state.lock:
            if base is not None and (
                state.stream is not base or view.etag != base.etag or not self._copies_usable()
            ):
                if state.stream is base:
                    state.stream = None  # S3's object is no longer the one the base describes
                base = None
            if base is None and view.remote_size:
                return None
        layout = base.layout if base else self.stream_layout
        headers = self.headers(item, with_times=False)
        # Copied parts carry the CRC32 too where the server gives it (SeaweedFS gives a copied part
        # the MD5 of its bytes as ETag only then); else the streams after the first go without.
        with self._states_lock:
            checksum = base is None or self._copies_crc
        stream = StreamingUpload(self._begin_multipart(item, headers, checksum=checksum), layout, headers)
        with state.lock:
            state.uploaded_bytes = 0  # this upload's progress: copies of the base count as they land
        if base is not None:
            source = self.store.copy_source(item.key)
            for number, (first, last) in enumerate(_copy_spans(layout, base.length), start=1):
                stream.futures[number] = self.pool.submit(
                    self._copy_part, item, stream.mpu, number, source, first, last, base.etag
                )
                stream.copied_parts = number
            stream.copied = base.length
            stream.skipped = layout.count(base.length) - stream.copied_parts
            stream.next_part = stream.copied_parts + 1
            log.debug(
                "%s: streaming on after %d bytes already in S3 (%d copied parts)",
                item.key,
                base.length,
                stream.copied_parts,
            )
        with state.lock:
            state.stream = stream
        return stream

    def _copy_part(
        self,
        item: StagedFile,
        mpu: MultipartUpload,
        number: int,
        source: str,
        first: int,
        last: int,
        etag: str,
    ) -> str:
        try:
            result = mpu.copy_part(number, source, first, last, if_match=etag)
        except (S3Error, TransportError):
            raise
        except RemoteStoreError:
            if mpu.algorithm:  # no CRC32 for the copy (the connector says so): this stream fails
                with self._states_lock:
                    self._copies_crc = False
            raise
        self._check_copy(item, result, first, last)
        self._sent(item, last - first + 1)
        return result

    def _copies_usable(self) -> bool:
        """May a stream copy what S3 has (no copied part seen whose ETag is not its bytes' MD5)?"""
        with self._states_lock:
            return self._copies_checkable is not False

    def _check_copy(self, item: StagedFile, etag: str, first: int, last: int) -> None:
        """The first copied part whose bytes are local tells whether the server gives copied parts
        the MD5 of their bytes as ETag: else the object's ETag (MD5 of its parts' ETags) cannot be
        checked by any reader, and every read of it would fail its check (SeaweedFS: an ETag of
        its own chunks, ``...-2``). Where it does not, this part fails (the stream is abandoned,
        the file goes up whole) and no stream copies again on this mount."""
        with self._states_lock:
            known = self._copies_checkable
        if known is None and item.covers(first, last + 1):
            digest = hashlib.md5()
            for offset in range(first, last + 1, 8 << 20):
                digest.update(os.pread(item.fd, min(8 << 20, last + 1 - offset), offset))
            known = digest.hexdigest() == etag
            with self._states_lock:
                first_seen = self._copies_checkable is None
                self._copies_checkable = known
            if not known and first_seen:
                log.warning(
                    "this server's UploadPartCopy gives a copied part an ETag that is not the MD5 "
                    "of its bytes (%s, MD5 %s): reads could not check such objects, so a file "
                    "changed after an fsync is uploaded whole",
                    etag,
                    digest.hexdigest(),
                )
        if known is False:
            raise RemoteStoreError(
                "%s: the ETag of copied bytes %d-%d cannot be checked" % (item.key, first, last)
            )

    def _begin_multipart(
        self, item: StagedFile, headers: dict[str, str], checksum: bool = True
    ) -> MultipartUpload:
        """Start a multipart upload, recorded so that a crash leaves no dangling parts."""
        mpu = self.store.start_multipart(item.key, headers, checksum=checksum)
        item.add_upload(mpu.upload_id)
        return mpu

    def abort_upload(self, item: StagedFile, upload_id: str) -> None:
        """Abort one of the item's multipart uploads; one whose abort fails stays recorded,
        to be tried again after the next upload or at recovery."""
        if self.store.abort_multipart(item.key, upload_id):
            item.forget_upload(upload_id)

    def _crc_parts(self) -> bool:
        """Do parts carry ``x-amz-checksum-crc32`` here (so one made as the bytes were written serves)?"""
        return bool(self.store.checksums) and self.store.checksum_algorithm == "CRC32"

    def _send_part(
        self,
        item: StagedFile,
        mpu: MultipartUpload,
        number: int,
        offset: int,
        size: int,
        slot: bool = True,
        crc: int | None = None,
        removable: bool = False,
    ) -> str:
        """Send part ``number``, bytes ``offset..offset+size`` of the staged file: with ``crc``
        (their CRC32 as written) from the file by the kernel, else read into a buffer and checked.
        ``removable``: not if the file is being removed (_Removed; a whole file's upload)."""
        if removable:
            try:
                self._check_not_removed(item)
            except _Removed:
                if slot:
                    self._slots.release()
                raise
        if crc is not None and mpu.algorithm == "CRC32" and self._crc_parts():
            try:
                header, digest = crc32_checksum(crc)
                item.note_digest(offset, size, digest)
                item.save()
                etag = mpu.upload_part(number, FileSpan(item.fd, offset, size), header)
                log.debug(
                    "%s: part %d sent from the staged file with the %s of its writes",
                    item.key,
                    number,
                    digest,
                )
                self._sent(item, size)
                item.sent(offset, offset + size)
                return etag
            finally:
                if slot:
                    self._slots.release()
        taken = self.memory.take(size)
        buf: bytearray | None = self.buffers.get(size)
        data = memoryview(b"")
        try:
            data = memoryview(buf)[: read_into(item.fd, memoryview(buf)[:size], offset)]
            etag = mpu.upload_part(number, data, self._checksum(item, offset, data, mpu.algorithm))
            self._sent(item, len(data))
            item.sent(offset, offset + len(data))
            return etag
        finally:
            try:
                data.release()  # nobody reads the part any more: its buffer serves the next one
            except BufferError:  # something still has it: the buffer is not used again
                buf = None
            self.buffers.put(buf)
            self.memory.give(taken)
            if slot:
                self._slots.release()

    def _checksum(self, item: StagedFile, offset: int, data: bytes, algorithm: str | None) -> dict[str, str]:
        """The checksum header for ``data`` (staged at ``offset``), its digest recorded in the
        journal first: one pass over the bytes. Empty with ``-o checksum=off``."""
        if not self.store.checksums:
            return {}
        header, digest = body_checksum(data, algorithm)
        item.note_digest(offset, len(data), digest)
        item.save()
        return header

    def abandon(
        self, item: StagedFile, reason: str, level: int = logging.INFO, removed: bool = False
    ) -> None:
        """Abort the item's stream, if any, saying why in one log line at ``level`` (and forget
        a base to stream on from): the file is then uploaded anew (whole at close, or by a
        stream that starts again from its first byte).

        A stream holding bytes released from the cache is kept (an error logged), unless the
        file was ``removed``: its parts are the only copy of those bytes.
        """
        state, why = self._state(item), reason
        with state.lock:
            state.written = None  # its bytes may change under what was counted (a truncate)
        if not removed and item.has_released():
            log.error("%s: streamed upload kept (%s): its parts hold bytes the cache released", item.key, why)
            return
        with state.lock:
            stream, state.stream, state.stream_off = state.stream, None, False
            futures = list(stream.futures.values()) if isinstance(stream, StreamingUpload) else []
        if isinstance(stream, StreamingUpload):
            log.log(
                level,
                "%s: streamed upload abandoned after %d bytes (%s): the file is uploaded anew",
                item.key,
                stream.sent_until,
                reason,
            )
            concurrent.futures.wait(futures)
            self.abort_upload(item, stream.mpu.upload_id)

    @contextlib.contextmanager
    def removing(self, item: StagedFile, reason: str) -> Iterator[None]:
        """Around the removal of ``item``'s file (its delete queued, its copy forgotten): its
        stream is abandoned (``reason`` logged), an upload of it under way sends no further
        request and has ended before the block runs, and none begins until the block is over.

        A PUT still under way when the delete reached S3 would bring the removed file back
        (or, conditional on a version the delete removed, keep ours as a conflict copy).
        """
        state = self._state(item)
        with state.lock:
            state.removing += 1
        try:
            self.abandon(item, reason, removed=True)
            with state.upload_lock:
                yield
        finally:
            with state.lock:
                state.removing -= 1

    def being_removed(self, item: StagedFile) -> bool:
        """Is the item's file being removed (:meth:`removing`)?"""
        state = self._state(item)
        with state.lock:
            return state.removing > 0

    def _check_not_removed(self, item: StagedFile) -> None:
        """Raise _Removed while the item's file is being removed (:meth:`removing`)."""
        if self.being_removed(item):
            raise _Removed()

    # -- flush ---------------------------------------------------------------------------

    def flush(self, item: StagedFile) -> bool:
        """Upload ``item`` if it is dirty; True when S3 has its latest content.

        Raises the connector's exception when the upload fails; the item
        stays dirty (and staged) for the next try. Raises
        :class:`~s3fs_mount.fs.errors.Conflict` when S3's object changed
        since this mount last saw it: ours is then in S3 under the conflict
        name, and the item with it.
        """
        state = self._state(item)
        with state.upload_lock:
            begun = item.begin_upload()
            if begun is None:
                return True
            generation, replaces = begun  # replaces: the version we may replace ("" for nothing)
            with state.lock:
                if not isinstance(state.stream, StreamingUpload):
                    state.uploaded_bytes = 0
                state.missed, state.whole_base = False, None
                state.merged, state.sent_metadata = False, None
            started = time.monotonic()
            sent = False
            try:
                self.before_put(item.key)
                for attempt in itertools.count(1):
                    try:
                        etag, size = self._upload(item, replaces)
                        break
                    except _Clobbered as clash:
                        rebased = self._append_onto_theirs(item, replaces, clash.theirs, attempt)
                        if rebased is None:
                            raise
                        generation, replaces = rebased
                self._abort_leftovers(item)
                sent = True
            except _Clobbered as clash:
                return self._keep_both(item, generation, replaces, clash.theirs)
            except _Removed:
                log.info("%s: removed while it was uploaded: the rest was not sent", item.key)
                return False
            except BaseException as exc:
                with state.lock:
                    state.error, state.failed_at = str(exc), time.monotonic()
                raise
            finally:
                if not sent:
                    item.end_upload()
            try:
                clean = self._uploaded(item, state, generation, etag, size, started)
            finally:
                item.end_upload()
        if not clean and item.holes() and self.refill is not None:
            # Written while a stream with released bytes completed: those bytes are now only in
            # S3's new version, and a dirty file must be whole (a crash uploads its data file).
            self.refill(item)
        return clean

    def _uploaded(
        self, item: StagedFile, state: UploadState, generation: int, etag: str, size: int, started: float
    ) -> bool:
        """The bookkeeping of an upload of ``generation`` that S3 now holds as ``etag``; whether the
        item is clean. Still ``uploading`` meanwhile: a stat takes the staged copy's attributes
        until :attr:`on_stored` has told the namespace the new ones (it said the old size between,
        and the kernel kept that for attr_ttl: a reader of a file just closed got 0 bytes)."""
        if CRASH_AFTER_UPLOAD:  # test hook: die in the window between upload and bookkeeping
            os.kill(os.getpid(), signal.SIGKILL)
        with state.lock:
            state.error, state.failed_at = "", 0.0
            missed, sent = state.missed, state.sent_metadata
        if missed:
            log.info("%s: written over as its parts went up: uploaded again at the next flush", item.key)
        clean = item.mark_clean(generation, etag, size, changed=missed, metadata=sent)
        with state.lock:
            # Uploaded whole (a stream failed, or none was under way) while still written (an
            # fsync): the next write streams on from what S3 has, so that a later fsync does
            # not send it all again. Not if a write landed since (its after_write drops a base
            # it falls on; one that landed before this is told by the generation).
            base, state.whole_base = state.whole_base, None
            if clean and base and state.stream is None and item.view().generation == generation:
                state.stream, state.stream_off = base, False
        log.debug("uploaded %s (%d bytes) in %.2fs", item.key, size, time.monotonic() - started)
        if UPLOAD_GATE:
            hold_at_upload_gate(item.key)
        if clean and self.on_stored is not None:
            self.on_stored(item)
        return clean

    def _abort_leftovers(self, item: StagedFile) -> None:
        """Abort the item's multipart uploads an earlier abort failed on (S3 answers again now)."""
        state = self._state(item)
        with state.lock:
            live = state.stream.mpu.upload_id if isinstance(state.stream, StreamingUpload) else None
        for upload_id in item.pending_uploads():
            if upload_id != live:
                self.abort_upload(item, upload_id)

    def _upload(self, item: StagedFile, replaces: str) -> tuple[str, int]:
        """Put the item's bytes in S3, replacing only version ``replaces``; (ETag, bytes)."""
        state = self._state(item)
        with state.lock:
            stream = state.stream
        if isinstance(stream, StreamBase):
            try:
                stream = self._start_stream(item, stream)
            except Exception as exc:
                log.warning(
                    "%s: could not stream on from the bytes in S3 (%s); uploading whole", item.key, exc
                )
                stream = None
        first_alone = False  # the parts of a whole upload wait for its first one to go up
        if isinstance(stream, StreamingUpload):
            try:
                return self._finish_stream(item, stream, replaces)
            except _Clobbered:
                self.abandon(item, "S3's object changed since this mount saw it")
                raise
            except Exception as exc:
                self._check_not_removed(item)  # its removal abandoned the stream
                if item.has_released():
                    raise  # its parts hold bytes the cache released: kept, the next flush goes on
                self.abandon(item, "its upload failed: %s" % exc, logging.WARNING)
                # The outage may be over (then the close succeeds), or not (a full server): one
                # part tells, before all go.
                first_alone = self._server_failed_parts(item, stream)
        self._check_not_removed(item)
        size = item.view().size
        if size < self.threshold:
            replaces = self._learn_theirs(item, replaces, self.put_check)
            data = os.pread(item.fd, size, 0)
            md5 = hashlib.md5(data).hexdigest()  # S3's ETag of these bytes
            item.note_landing(md5)  # recorded (below) before the PUT: a crash after it lands is told
            checksum = self._checksum(item, 0, data, self.store.checksum_algorithm)
            headers = {**self.headers(item), **checksum}
            if not self.store.checksums:
                item.save()  # (else _checksum saved it)
            condition = _conditions(replaces, self.put_check)
            with state.lock:
                state.sent_metadata = metadata_of(headers)
            try:
                etag = self.store.put(item.key, data, headers, **condition)
            except S3Error as exc:
                self._refused(item, exc, md5, "if_none_match" in condition)
                etag = md5
            crc = checksum.get("x-amz-checksum-crc32")
            self._note_stored(item, etag, size, "CRC32:" + crc if crc else "")
            return etag, size
        self._check_by_head(item, replaces, self.complete_check)  # fail before sending it all
        headers = self.headers(item)
        with state.lock:
            state.sent_metadata = metadata_of(headers)
        begun: list[MultipartUpload] = []

        def recorded(mpu: MultipartUpload) -> None:
            begun.append(mpu)
            item.add_upload(mpu.upload_id)

        etag = upload_in_parts(  # the connector's one routine, through the mounted bucket
            self.store,
            item.key,
            size,
            self.part_size,
            lambda mpu, n, off, length: self._send_part(item, mpu, n, off, length, False, removable=True),
            headers=headers,
            on_begin=recorded,
            complete=lambda mpu: self._complete(item, mpu, replaces),
            abort=lambda mpu: self.abort_upload(item, mpu.upload_id),
            first_alone=first_alone,
        )
        item.forget_upload(begun[0].upload_id)
        with state.lock:
            merged = state.merged
        if merged:  # another client's metadata change, merged at the complete: ours lacks it
            etag = self._store_metadata(item, etag)
        layout = PartLayout(part_size_for(size, self.part_size))
        whole = layout.whole(size)
        same = layout.base == self.stream_layout.base and layout.count(whole) <= self.stream_layout.per_step
        with state.lock:
            state.whole_base = StreamBase(etag, whole, self.stream_layout) if whole and same else None
        return etag, size

    def _server_failed_parts(self, item: StagedFile, stream: StreamingUpload) -> bool:
        """Did the (abandoned) stream fail because S3 failed a part it sent for good, its retries
        spent on a server's or the network's failure (a full server's 500s), no copy failing?
        Uploading the file whole at once may send the same parts to the same failure."""
        cause = stream.mpu.gave_up()
        if cause is None or not is_retryable(cause):
            return False
        with self._state(item).lock:
            copies = [f for n, f in stream.futures.items() if n <= stream.copied_parts]
        return all(f.done() and not f.cancelled() and f.exception() is None for f in copies)

    def _finish_stream(self, item: StagedFile, stream: StreamingUpload, replaces: str) -> tuple[str, int]:
        """Send what the stream has not sent (the tail; parts that failed, or were in flight when
        a mount crashed), then complete it."""
        state = self._state(item)
        size = item.view().size
        with state.lock:
            read_before = stream.sent_until  # the parts submitted before this upload began
            spans = list(stream.layout.spans(size, stream.copied_parts + 1 + stream.skipped))
            stream.next_part = max(stream.next_part, stream.copied_parts + 1 + len(spans))
            futures = dict(stream.futures)
            stale = set(stream.stale)
        if stale and min(stale) <= stream.copied_parts:
            raise ValueError("bytes copied from S3's version were written over")  # abandoned: whole
        for number, fut in futures.items():
            concurrent.futures.wait([fut])
            if fut.exception() is not None and number not in stale:
                if number <= stream.copied_parts or not item.has_released():
                    fut.result()  # raises: the stream is abandoned, the file uploaded whole
        if stream.mpu.gave_up() is not None:
            stream.mpu.send_again()  # every part sent has ended: those that failed go again
        for _ in range(RESENDS):
            resend = {}
            with state.lock:  # a part written over goes again once its send under way is over
                for n, off, length in spans:
                    number = n - stream.skipped
                    fut = futures.get(number)
                    if fut is None or fut.exception() is not None or number in stream.stale:
                        stream.stale.discard(number)
                        resend[number] = self.pool.submit(
                            self._send_part, item, stream.mpu, number, off, length, False
                        )
                stream.futures.update(resend)
            for fut in resend.values():
                fut.result()
            with state.lock:
                futures = dict(stream.futures)
                if not stream.stale:
                    break
        for attempt in range(3):
            try:
                etag = self._complete(item, stream.mpu, replaces)
                break
            except _Clobbered as clash:
                if not item.has_released() or attempt == 2:
                    raise
                self._set_theirs_aside(item, clash.theirs)
                replaces = clash.theirs
        whole_parts = stream.layout.whole(size)
        with state.lock:
            # A part written over and not sent again, or a write in progress that may land on a
            # part read before this upload began (the generation tells of the others): S3 may
            # lack bytes written before it began.
            state.missed = bool(stream.stale) or any(start < read_before for start, _ in state.writing)
            # The next write streams on from here, copying what S3 now has (a write in progress
            # that lands on these bytes drops the base, see _written_over).
            whole = whole_parts and not stream.stale
            state.stream = StreamBase(etag, whole_parts, stream.layout) if whole else None
        item.forget_upload(stream.mpu.upload_id)
        with state.lock:
            merged, state.sent_metadata = state.merged, metadata_of(stream.headers)
        if merged or item.view().times_pinned or self.headers(item, with_times=False) != stream.headers:
            # Metadata changed while the parts were going up (here, or another client's, merged
            # at the complete), or times were set (utimens, as cp -p does): one self-copy sets
            # them. Else Last-Modified stands for the times.
            etag = self._store_metadata(item, etag)
            with state.lock:
                if isinstance(state.stream, StreamBase):
                    state.stream.etag = etag
        return etag, size

    def _store_metadata(self, item: StagedFile, etag: str) -> str:
        """Give S3's version ``etag`` (just uploaded) the item's metadata now: one self-copy (the
        same bytes: on AWS a new ETag, the same whole-object digest)."""
        headers = self.headers(item)
        copied = self.copy(item.key, item.key, headers, replace_metadata=True, if_match=etag)
        state = self._state(item)
        with state.lock:
            state.sent_metadata = metadata_of(headers)
            if state.stored[0] == etag:
                state.stored = (copied, *state.stored[1:])
        return copied

    # -- conflicts -------------------------------------------------------------------------

    def _complete(self, item: StagedFile, mpu: MultipartUpload, replaces: str) -> str:
        self._check_not_removed(item)
        replaces = self._learn_theirs(item, replaces, self.complete_check)
        item.note_landing(mpu.expected_etag())  # recorded before it lands: a crash after it is told
        item.save()
        condition = _conditions(replaces, self.complete_check)
        try:
            etag = mpu.complete(**condition)
        except S3Error as exc:
            etag = mpu.expected_etag()
            self._refused(item, exc, etag, "if_none_match" in condition)
        self._note_stored(item, etag, mpu.sent_bytes(), mpu.expected_digest())
        return etag

    def _learn_theirs(self, item: StagedFile, replaces: str, check: str) -> str:
        """Just before an upload lands (a PUT, a multipart complete): what S3 has now, by one HEAD
        (none for a new file where the server honours conditions, none with the check off).
        Returns the version the write may replace: ``replaces``, or the one a metadata copy of it
        made.

        Not version ``replaces``: raise _Clobbered (the conditional write would be refused), but
        when it holds the same bytes (:meth:`_same_bytes`: on AWS a CopyObject of an object
        uploaded in parts, another mount's chmod, gives it a new ETag). Else, or then, merge into
        ours another client's metadata-only change since this mount saw it (a self-copy keeps
        the ETag on other servers, so no condition tells of it;
        :meth:`StagedFile.merge_remote`), one log line naming what was taken or overridden.
        """
        if check == CHECK_OFF or (check == CHECK_CONDITIONAL and not replaces):
            return replaces
        try:
            info: ObjectInfo | None = self.store.head(item.key)
        except S3Error as exc:
            if not exc.not_found:
                raise
            info = None
        current = info.etag if info is not None else ""
        if current != replaces:
            if info is None or not replaces or not self._same_bytes(item, replaces, info):
                raise _Clobbered(current)
            log.info(
                "%s: version %s is now %s, with the same bytes (%d, %s): another client changed its "
                "metadata only",
                item.key,
                replaces,
                current,
                info.size,
                info.digest,
            )
            replaces = current
        if info is None:
            return replaces
        merge = item.merge_remote(info.metadata)
        if merge.taken:
            log.info(
                "%s: another client changed %s (metadata only) since this mount saw it: "
                "merged into our upload",
                item.key,
                ", ".join(merge.taken),
            )
            state = self._state(item)
            with state.lock:
                state.merged = True
        if merge.overridden:
            log.warning(
                "%s: another client changed %s (metadata only), and so did we: ours stands, "
                "theirs is lost",
                item.key,
                ", ".join(merge.overridden),
            )
        return replaces

    def _append_onto_theirs(
        self, item: StagedFile, replaces: str, theirs: str, attempt: int
    ) -> tuple[int, str] | None:
        """Our upload, replacing version ``replaces``, met another client's (``theirs``; '': the
        object is gone). If the item's changes since ``replaces`` are appends alone
        (:meth:`StagedFile.appended_to`), fetch the version S3 holds now and make the item that
        version followed by our appended bytes (:meth:`StagedFile.rebase_appends`): returns
        ``(generation, etag)`` of it, for the upload to go again conditional on that version.
        None, for a conflict copy as before: another kind of change, no object (a removal is not
        appended to), a version or our appends over :data:`APPEND_ONTO_MOST` (both are read into
        memory), bytes that fail their check (:meth:`_fetch_theirs`), or :data:`APPEND_TRIES`
        versions each replaced in turn."""
        start = item.appended_to(replaces)
        if start < 0 or not theirs or attempt > APPEND_TRIES or item.view().size - start > APPEND_ONTO_MOST:
            return None
        if attempt > 1:
            time.sleep(random.uniform(0, min(APPEND_PAUSE_MOST, APPEND_PAUSE * attempt)))
        fetched = self._fetch_theirs(item)
        if fetched is None:
            return None
        info, data = fetched
        generation = item.rebase_appends(replaces, info.etag, data, info.metadata, info.headers)
        if generation is None:
            return None
        state = self._state(item)
        with state.lock:
            state.written = None  # the file's bytes are no longer the writes in order
            if isinstance(state.stream, StreamBase):
                state.stream = None  # S3's first bytes are theirs
        log.info(
            "%s: another client's version %s (%d bytes) replaced %s while we appended %d bytes: "
            "ours go after theirs, as O_APPEND on one disk",
            item.key,
            info.etag,
            info.size,
            replaces,
            item.view().size - info.size,
        )
        return generation, info.etag

    def _fetch_theirs(self, item: StagedFile) -> tuple[ObjectInfo, bytes] | None:
        """The version S3 holds of the item's key now, and its bytes, checked as a reader's are
        (:attr:`fetch_version`: the one checked path down, a multipart or composite digest
        part by part); None (logged) when there is none, it is over :data:`APPEND_ONTO_MOST`,
        or its bytes fail their check :data:`APPEND_CHECK_TRIES` times. A version replaced
        between the HEAD and the GET is looked up again (up to :data:`APPEND_TRIES` times)."""
        if self.fetch_version is None:
            return None
        failed = 0
        for _ in range(APPEND_TRIES):
            try:
                info = self.store.head(item.key)
            except S3Error as exc:
                if exc.not_found:
                    return None
                raise
            if info.size > APPEND_ONTO_MOST:
                log.warning(
                    "%s: our appends are not added to another client's version %s: it holds %d bytes, "
                    "more than %d read into memory",
                    item.key,
                    info.etag,
                    info.size,
                    APPEND_ONTO_MOST,
                )
                return None
            try:
                return info, self.fetch_version(item.key, info.etag, info.size, info.digest)
            except S3Error as exc:
                if not (exc.precondition_failed or exc.not_found):
                    raise
                # replaced again meanwhile: look again
            except Corrupt as exc:
                failed += 1
                last = failed >= APPEND_CHECK_TRIES
                log.warning(
                    "%s: the bytes of another client's version %s failed their check (%s): %s",
                    item.key,
                    info.etag,
                    exc.strerror,
                    "our appends are not added to them" if last else "fetched again",
                )
                if last:
                    return None
        return None

    def _check_by_head(self, item: StagedFile, replaces: str, check: str) -> None:
        """Where the server ignores conditions: raise _Clobbered if S3's object is not ``replaces``."""
        if check != CHECK_HEAD:
            return
        current = self.store.current_etag(item.key)
        if current != replaces:
            raise _Clobbered(current)

    def _refused(self, item: StagedFile, exc: S3Error, ours: str, creating: bool = False) -> None:
        """A conditional write got ``exc``: re-raise it, pass if S3 has ``ours``, or raise _Clobbered.
        One conditional on the key being free (``creating``) refused by AWS's 409 (another write
        of the key under way, :attr:`S3Error.conditional_conflict`) is _Clobbered too: the key is
        being taken.

        (A retried request whose first attempt did land is refused by its own condition.)
        """
        if creating and exc.conditional_conflict:
            raise _Clobbered(self.store.current_etag(item.key) or "another write under way") from exc
        if not exc.precondition_failed:
            raise exc
        current = self.store.current_etag(item.key)
        if current and current == ours:
            return
        raise _Clobbered(current) from exc

    def _set_theirs_aside(self, item: StagedFile, theirs: str) -> None:
        """S3's object changed under a stream whose parts hold bytes the cache released: ours can
        only complete at the path, so theirs (version ``theirs``) is copied to a conflict name
        nothing holds (:meth:`_copy_aside`)."""
        saved_as = self._copy_aside(item.key, theirs) if theirs else ""
        log.error(
            "%s changed in S3 while ours was streamed (S3 now has %s): ours holds bytes only its "
            "upload has, so ours goes to the path and theirs to %s",
            item.key,
            theirs or "none (deleted)",
            saved_as or "nowhere (there is no theirs)",
        )

    def _copy_aside(self, key: str, etag: str) -> str:
        """Copy version ``etag`` of ``key`` to a conflict name where S3 has nothing, and return
        that name. Another mount that lost a conflict on the same key in the same second picks
        the same name: the copy is conditional on the name being free (``If-None-Match: *``),
        and a name taken (412, or a HEAD just before that finds an object there, for a server
        that ignores the condition on a copy; or AWS's 409, another write of the name under way:
        :attr:`S3Error.conditional_conflict`) moves on to the next (``-2``, ``-3``...).
        A 412 of a source no longer version ``etag`` is raised."""
        taken: set[str] = set()
        for _ in range(CONFLICT_NAMES):
            saved_as = conflict_name(key, self.store.key_room(), taken=taken.__contains__)
            if not self.store.current_etag(saved_as):
                try:
                    self.copy(key, saved_as, if_match=etag, if_none_match=True)
                    return saved_as
                except S3Error as exc:
                    taken_now = exc.conditional_conflict or (
                        exc.precondition_failed and bool(self.store.current_etag(saved_as))
                    )
                    if not taken_now:
                        raise
            log.info("%s: taken in S3 (another client's conflict copy?): trying the next name", saved_as)
            taken.add(saved_as)
        raise RemoteStoreError("%s: no free conflict name after %d tries" % (key, CONFLICT_NAMES))

    def copy(self, source: str, destination: str, *args: Any, **kwargs: Any) -> str:
        """``store.copy_object``; a copy in parts is recorded while under way (fs/copies.py)."""
        return self.copies.run(
            destination,
            lambda on_parts: self.store.copy_object(source, destination, *args, on_parts=on_parts, **kwargs),
        )

    def resume(self, item: StagedFile) -> str:
        """After a crash: take up the upload the item's record names, whose parts hold the bytes
        the cache released, so that the next :meth:`flush` finishes it (sending the parts not
        recorded from the staged file). Returns its upload id ("" when there is none)."""
        recorded = item.recorded_stream()
        if not recorded or not item.has_released():
            return ""
        parts = {int(n): (str(etag), str(crc)) for n, etag, crc in recorded["parts"]}
        mpu = self.store.resume_multipart(
            item.key,
            recorded["upload_id"],
            {n: etag for n, (etag, _) in parts.items()},
            {n: crc for n, (_, crc) in parts.items() if crc},
            recorded.get("algorithm"),
        )
        stream = StreamingUpload(mpu, PartLayout(int(recorded["base"]), int(recorded["per_step"])), {})
        for number, (etag, _) in parts.items():
            done: concurrent.futures.Future[str] = concurrent.futures.Future()
            done.set_result(etag)
            stream.futures[number] = done
        stream.released = parts
        stream.next_part = max(parts) + 1
        state = self._state(item)
        with state.lock:
            state.stream = stream
        return mpu.upload_id

    def resumed_already_done(self, item: StagedFile, etag: str) -> bool:
        """Is ``etag`` what the resumed upload of ``item`` gives when completed (the mount was
        killed after completing it, before its record said so)? Then that upload is forgotten."""
        state = self._state(item)
        with state.lock:
            stream = state.stream
        if not isinstance(stream, StreamingUpload):
            return False
        digests = []
        for n, off, length in stream.layout.spans(item.view().size):
            if n in stream.released:
                digests.append(bytes.fromhex(stream.released[n][0]))
            else:
                digest = hashlib.md5()
                for sub in range(off, off + length, 1 << 20):
                    digest.update(os.pread(item.fd, min(1 << 20, off + length - sub), sub))
                digests.append(digest.digest())
        if composite(digests) != etag:
            return False
        with state.lock:
            if state.stream is stream:
                state.stream = None
        return True

    def _keep_both(self, item: StagedFile, generation: int, replaces: str, theirs: str) -> bool:
        """S3's object changed under us: upload ours as KEY.conflict-TIMESTAMP, and say so.

        A conflict name S3 already holds (another mount's conflict copy of the same key in the
        same second: our upload there, conditional on nothing being there, is refused) is left
        to it, and ours goes to the next name (``-2``, ``-3``...)."""
        key = item.key
        cache = self.staging or item.cache
        taken: set[str] = set()

        def free(name: str) -> bool:
            return name not in taken and cache.get(name) is None

        saved_as = conflict_name(key, self.store.key_room(), taken=lambda name: not free(name))
        log.error(
            "%s changed in S3 since this mount saw it (ours replaced ETag %s, S3 now has %s): "
            "theirs stays, ours goes to %s",
            key,
            replaces or "none (a new file)",
            theirs or "none (deleted)",
            saved_as,
        )
        cache.rekey(key, saved_as)
        item.stored_as("")  # nothing there yet; the item stays uploading (flush ends that)
        state = self._state(item)
        for attempt in itertools.count(1):
            try:
                etag, size = self._upload(item, "")
                break
            except _Clobbered as clash:
                taken.add(saved_as)
                if attempt == CONFLICT_NAMES:
                    with state.lock:
                        state.error = "no free conflict name after %d tries" % attempt
                    raise RemoteStoreError("%s: %s" % (key, state.error)) from clash
                moved_to = conflict_name(key, self.store.key_room(), taken=lambda name: not free(name))
                log.warning(
                    "%s: S3 already has an object there (%s, another client's conflict copy?): it "
                    "stays, ours goes to %s",
                    saved_as,
                    clash.theirs,
                    moved_to,
                )
                cache.rekey(saved_as, moved_to)
                saved_as = moved_to
            except BaseException as exc:
                with state.lock:
                    state.error, state.failed_at = str(exc), time.monotonic()
                raise
        with state.lock:
            sent = state.sent_metadata
        item.mark_clean(generation, etag, size, metadata=sent)
        with state.lock:
            state.error = ""
        raise Conflict(key, saved_as, replaces, theirs)


class _Removed(Exception):
    """Internal: the item's file is being removed (:meth:`Uploader.removing`): not uploaded."""


class _Clobbered(Exception):
    """Internal: S3's object is not the version the upload may replace (``theirs``: its ETag)."""

    def __init__(self, theirs: str) -> None:
        super().__init__(theirs)
        self.theirs = theirs


def hold_at_write_gate(offset: int) -> None:
    """Test hook (:data:`WRITE_GATE`): hold a write at the gate's offset until its file exists."""
    at, _, path = WRITE_GATE.partition(":")
    if int(at) != offset:
        return
    log.warning("test gate: the write at %d waits for %s", offset, path)
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def hold_at_upload_gate(key: str) -> None:
    """Test hook (:data:`UPLOAD_GATE`): hold an upload of the gate's key, done and marked clean,
    until the gate's file exists."""
    at, _, path = UPLOAD_GATE.partition(":")
    if at != key:
        return
    log.warning("test gate: the upload of %s waits for %s", key, path)
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` with the bytes of ``fd`` from ``offset``; returns how many (fewer at its end)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            break
        done += got
    return done


def _conditions(replaces: str, check: str) -> dict[str, object]:
    """The keyword arguments that make a write replace only ``replaces``."""
    if check != CHECK_CONDITIONAL:
        return {}
    return {"if_match": replaces} if replaces else {"if_none_match": True}


def _copy_spans(layout: PartLayout, length: int) -> list[tuple[int, int]]:
    """``(first, last)`` byte ranges that copy the first ``length`` bytes (whole parts of
    ``layout``): one UploadPartCopy a part. Not fewer, larger copies: a server that reads and
    checksums what it copies (SeaweedFS, with the CRC32 the stream carries) took longer than
    the read timeout over hundreds of MiB, and the object keeps parts of one size, which every
    read can check without asking where each part is."""
    return [(offset, offset + size - 1) for _, offset, size in layout.spans(length)]


def conflict_name(key: str, room: int, taken: Callable[[str], bool] = lambda name: False) -> str:
    """Where our version of ``key`` goes when S3's changed meanwhile (also used at recovery):
    ``KEY.conflict-TIMESTAMP``, its name shortened (by whole characters) to stay a name
    (NAME_MAX bytes) and its key to fit ``room`` bytes (:meth:`Bucket.key_room`): a longer one
    S3 refused, and our version stayed dirty for ever. (Under a parent within 25 bytes of the
    room no name fits: S3 refuses that key, and ours stays staged, as the log says.)

    A name ``taken`` says is in use (a staged copy: an earlier conflict of the key within the
    same second, not yet in S3) gets ``-2``, ``-3``...: moving ours onto it dropped that copy."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    parent, slash, name = key.rpartition("/")
    raw = name.encode("utf-8", "surrogateescape")
    for n in itertools.count(1):
        suffix = ".conflict-%s%s" % (stamp, "" if n == 1 else "-%d" % n)
        fits = min(NAME_MAX, room - len((parent + slash).encode("utf-8", "surrogateescape"))) - len(suffix)
        short = raw[: max(0, fits)].decode("utf-8", "ignore") if len(raw) > fits else name
        if not taken(parent + slash + short + suffix):
            break
    return parent + slash + short + suffix


class WritebackQueue:
    """With ``-o writeback``: uploads run here, so close returns at once.

    Bounded: ``submit`` blocks when ``limit`` files are already waiting.

    A failed upload is tried again (its file kept staged meanwhile; the closer was told
    nothing, its close had returned): the oldest failed file alone, ``AGAIN_FIRST`` s after
    the first failure and then at doubling intervals up to ``AGAIN_MOST`` s, and every failed
    file at once as soon as such a try succeeds (S3 answers again). An outage costs one file's
    requests a round, not every file's; before round 36 nothing was tried again until a sync,
    an fsync or the unmount, and files closed during a blip of S3 stayed out of it.

    Without ``-o writeback`` (closes upload themselves) a file whose close failed comes here
    (:meth:`retry_later`) and is tried again the same way: before round 37 it waited for the
    next fsync, close or sync of that file, or the unmount, which might never come.
    """

    def __init__(
        self,
        uploader: Uploader,
        workers: int = 4,
        limit: int = 256,
        on_uploaded: Callable[[StagedFile], None] | None = None,
        on_conflict: Callable[[Conflict], None] | None = None,
    ) -> None:
        self.uploader = uploader  # immutable after __init__ (as every field but _busy)
        self.on_uploaded = on_uploaded  # told of each file uploaded
        self.on_conflict = on_conflict  # told of each upload that found another client's version
        self._queue: queue.Queue[StagedFile | None] = queue.Queue(limit)
        self._idle = threading.Condition()
        self._busy = 0  # GUARDED_BY(_idle): files submitted and not yet done
        #: GUARDED_BY(_idle): files whose upload failed, to try again, oldest first (by id).
        self._failed: dict[int, StagedFile] = {}
        #: GUARDED_BY(_idle): id -> (file, how its next upload is made, its generation then)
        #: where that is not ``uploader.flush`` (:meth:`retry_later`); dropped once it succeeds,
        #: or the file is changed since (then its own close or sync uploads it as any other).
        self._how: dict[int, tuple[StagedFile, Callable[[StagedFile], bool], int]] = {}
        self._probe: StagedFile | None = None  # GUARDED_BY(_idle): the failed file tried alone
        self._all_again = False  # GUARDED_BY(_idle): the probe succeeded: try every failed file
        self._delay = AGAIN_FIRST  # GUARDED_BY(_idle): before the next probe
        self._due = 0.0  # GUARDED_BY(_idle): time.monotonic() of the next probe
        self._stopping = False  # GUARDED_BY(_idle)
        self._threads = [
            threading.Thread(target=self._run, name="writeback-%d" % i, daemon=True) for i in range(workers)
        ]
        self._again = threading.Thread(target=self._try_again, name="writeback-again", daemon=True)
        for t in [*self._threads, self._again]:
            t.start()

    def submit(self, item: StagedFile) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put(item)

    def retry_later(self, item: StagedFile, upload: Callable[[StagedFile], bool] | None = None) -> None:
        """``item``'s upload failed elsewhere (its close without ``-o writeback``, a truncate by
        path, the recovery at mount): try it again in the background, as a failed upload of
        the queue's own. ``upload``: how, until it succeeds once (True: the file is in S3;
        raises as :meth:`Uploader.flush`); by default as any other, :meth:`Uploader.flush`."""
        generation = item.view().generation
        with self._idle:
            if upload is not None:
                self._how[id(item)] = (item, upload, generation)
            if id(item) not in self._failed and self._probe is not item:
                self._ended(item, True)
                self._idle.notify_all()

    def retrying(self) -> tuple[int, float | None]:
        """Files waiting to be tried again, and the seconds until the next try (None: under way
        or nothing waits)."""
        with self._idle:
            count = len(self._failed) + (self._probe is not None)
            if not self._failed or self._all_again or self._probe is not None:
                return count, None
            return count, max(0.0, self._due - time.monotonic())

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            failed = False
            try:
                if self._flush(item) and self.on_uploaded is not None:
                    self.on_uploaded(item)
            except Conflict as exc:  # both versions kept, and logged by the uploader
                if self.on_conflict is not None:
                    self.on_conflict(exc)
            except Exception as exc:
                failed = True
                log.error("background upload of %s failed, kept staged (tried again): %s", item.key, exc)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._ended(item, failed)
                    self._idle.notify_all()

    def _ended(self, item: StagedFile, failed: bool) -> None:
        """Keep a failed upload's file to try again; a probe that succeeded frees the others
        (caller holds ``_idle``)."""
        probe = self._probe is item
        if probe:
            self._probe = None
        if failed:
            if not self._failed and self._probe is None and not probe:  # the first failure of a run
                self._delay = AGAIN_FIRST
                self._due = time.monotonic() + self._delay
            self._failed[id(item)] = item
        elif probe:
            self._delay = AGAIN_FIRST
            self._all_again = bool(self._failed)

    def _try_again(self) -> None:
        """Submit failed uploads again, as the class says, until :meth:`stop`."""
        while True:
            with self._idle:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._failed and self._all_again:
                        batch = list(self._failed.values())
                        self._failed.clear()
                        self._all_again = False
                        break
                    if self._failed and self._probe is None and now >= self._due:
                        batch = [self._failed.pop(next(iter(self._failed)))]
                        self._probe = batch[0]
                        self._due = now + self._delay
                        self._delay = min(self._delay * 2, AGAIN_MOST)
                        break
                    waiting = self._failed and self._probe is None
                    self._idle.wait(max(0.05, self._due - now) if waiting else None)
            if len(batch) > 1:
                log.info("S3 takes uploads again: trying the %d files whose upload failed", len(batch))
            for item in batch:
                staging = self.uploader.staging
                if staging is None or staging.left_dirty(item):
                    self.submit(item)  # else written again (its close submits it), uploaded, or gone
                else:
                    with self._idle:
                        if self._probe is item:  # not tried: tells nothing of S3
                            self._probe = None
                            self._idle.notify_all()

    def _flush(self, item: StagedFile) -> bool:
        """Upload ``item``, and again while it was changed meanwhile and is closed: a chmod or a
        touch while its upload ran (tar, ``cp -p`` and ``rsync -a`` set them right after the
        close) left it dirty with no release to submit it, and S3 without them until a sync or
        the unmount (29 files of 200 touched after their close, measured)."""
        generation = item.view().generation
        with self._idle:
            how = self._how.get(id(item))
            if how is not None and (how[0] is not item or how[2] != generation):
                del self._how[id(item)]
                how = None
        if how is not None:
            clean = how[1](item)
            with self._idle:
                self._how.pop(id(item), None)
        else:
            clean = self.uploader.flush(item)
        staging = self.uploader.staging
        for _ in range(WRITEBACK_AGAIN):
            if staging is None or not staging.left_dirty(item):
                break
            clean = self.uploader.flush(item)
        return clean

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        with self._idle:
            self._stopping = True
            self._idle.notify_all()
        self._again.join()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
