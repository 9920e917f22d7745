"""The staging cache: local copies of file contents, crash-safe.

Each staged file is an *item*: a sparse data file ``<id>.data`` plus its
*record* in the staging journal (:mod:`s3fs_mount.fs.journal`): its bucket
and key, size, which byte ranges are local, the ETag its remote bytes came
from (and the metadata S3 had on that version), its pending metadata and
whether it is dirty. The record is written
whenever an item becomes dirty, and taken back once it is clean, so a crash
of the mount never loses the knowledge that a file must still be uploaded:
:meth:`StagingCache.recover` finds dirty items at the next mount. (Data and
record reach the disk itself when the user asks, with fsync, as for any
file; an fsync whose upload fails makes them durable here.)

**Released ranges.** A file streamed while it is written (:mod:`s3fs_mount.fs.upload`)
may be larger than the cache: once a part of it is in S3 (an uncompleted multipart
upload) and the cache is full, the upload unit *releases* the part's bytes
(:meth:`StagedFile.release`): the record says first, durably, which ranges and what
the upload unit needs to finish that upload (its id, its parts), then the bytes are
punched out of the data file. They are then in S3 only, where nobody can read them
until the upload completes: a read or write of them raises :class:`ReleasedRange`,
and the caller completes the upload first (a checkpoint); after a crash, recovery
finishes that upload from the record instead of aborting it.

Locks, in the order they may be taken:

1. The upload unit's locks of an item (:class:`~s3fs_mount.fs.upload.UploadState`:
   its ``upload_lock``, one upload of the item at a time, then its ``lock``).
2. ``StagedFile.save_lock``: one record write of an item at a time.
3. ``StagingCache._lock``: the key -> item table, the usage total, and each
   item's ``key``, ``open_count``, ``last_used`` and ``unlinked``.
4. ``StagedFile.cond`` (its lock): the item's content and version fields
   (each field says which lock guards it).
5. The journal's own lock (:class:`~s3fs_mount.fs.journal.StagingJournal`):
   one append at a time; nothing is taken while it is held.

Only this module takes an item's locks: other units see an item through its
methods (prefetch through :meth:`StagedFile.claim_missing`,
:meth:`StagedFile.fill` and :meth:`StagedFile.unclaim`; readers through
:meth:`StagedFile.view`), and tests/test_layers.py checks that on the source.
No lock is held during a network request except the upload unit's
``upload_lock``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.fs import filecalls
from s3fs_mount.fs.attrs import (
    ATIME,
    CTIME,
    MTIME,
    MetadataMerge,
    merge_metadata,
    parse_time,
    relatime_due,
    time_metadata,
)
from s3fs_mount.fs.journal import StagingJournal
from s3fs_mount.fs.options import human_size
from s3fs_mount.fs.ranges import RangeSet
from s3fs_mount.fs.spares import SpareFiles, remove_left
from s3fs_mount.s3.checksums import PieceDigests, digest_of_bytes

log = logging.getLogger(__name__)

CLEAN, DIRTY, UPLOADING = "clean", "dirty", "uploading"
T = TypeVar("T")
#: Room kept for the journal's growth between two looks at the cache's size (StagingCache.needs_room).
JOURNAL_ROOM = 1 << 20



def punch_hole(fd: int, start: int, end: int) -> None:
    """Free the disk blocks of ``[start, end)`` of ``fd``, its size kept (they read as zeros).

    :raises OSError: when the file system cannot (EOPNOTSUPP).
    """
    filecalls.fallocate(fd, filecalls.PUNCH_HOLE | filecalls.KEEP_SIZE, start, end - start)


def disk_full(exc: OSError) -> bool:
    """Did the cache's disk refuse bytes for want of room (ENOSPC, or EDQUOT: a quota)?"""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (:func:`pwrite_some`, which must take it all).

    :raises OSError: ENOSPC (or another error) when the rest cannot be written.
    """
    if pwrite_some(fd, data, offset) < len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def pwrite_some(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write ``data`` at ``offset``: all of it, or what the disk took before it filled (a short
    count, as write(2) answers then), so that the caller counts only the bytes that are there
    (ignoring a short pwrite once left zeros marked present: a lost byte).

    :raises OSError: ENOSPC (or another error) when not one byte could be written.
    """
    view = memoryview(data)
    done = 0
    while done < len(data):
        try:
            n = os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            if done and disk_full(exc):
                return done
            raise
        if n == 0:
            if done:
                return done
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n
    return done


def disk_room(path: str) -> int:
    """Bytes free for us on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def drop_from_page_cache(fd: int, start: int, end: int) -> None:
    """Write ``[start, end)`` of ``fd`` to its disk now and take it out of the page cache.

    The file keeps every byte (on disk, read back from there if asked); only the kernel's
    copy goes, so that the pages are used again for the next bytes written. New page-cache
    pages are what a large write costs most here: on this project's VM, ``pwrite`` of 1 GiB
    into a new file took 4-5 s of CPU, against 0.2-0.3 s when each 8 MiB was dropped behind
    the writer (bench/README.md, "Sequential writes").

    :raises OSError: when the bytes could not be written to the disk (then nothing is dropped).
    """
    filecalls.sync_file_range(fd, start, end - start, filecalls.SYNC_RANGE_WRITE_AND_WAIT)
    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


class ReleasedRange(Exception):
    """The bytes asked for were released from the cache (see the module docstring): they are
    in S3 only as parts of an upload under way, which must complete before they can be used."""


@dataclass
class StagedRecord:
    """What the journal keeps of a staged item: enough to upload it after a crash.

    Its one serialization, :meth:`to_json` and :meth:`from_json`, is what
    :meth:`StagedFile.save` writes and :meth:`StagingCache.recover` reads;
    records of earlier versions (fewer fields, ``<id>.json`` sidecars) read
    with the defaults.
    """

    bucket: str
    key: str
    size: int = 0
    dirty: bool = False
    #: Bytes ``[0, remote_size)`` still come from S3 when missing.
    remote_size: int = 0
    #: The byte ranges local when it was written (recovery takes the data file as whole).
    present: list[tuple[int, int]] = field(default_factory=list)
    etag: str = ""  # the remote version its bytes came from ("" for a new file)
    metadata: dict[str, str] = field(default_factory=dict)
    #: The metadata S3's version ``etag`` had when last seen (None: not known, an older record).
    base_metadata: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    mtime: float | None = None  # None: not recorded (then: the time of recovery)
    atime: float | None = None
    ctime: float | None = None
    #: Multipart uploads under way, aborted after a crash.
    upload_ids: list[str] = field(default_factory=list)
    #: (offset, length) -> digest of those bytes as an upload sent them (see StagedFile.digests).
    digests: dict[tuple[int, int], str] = field(default_factory=dict)
    #: Ranges punched out of the data file: their bytes are in the parts ``stream`` names.
    released: list[tuple[int, int]] = field(default_factory=list)
    #: What the upload unit needs to finish the upload holding the released ranges ({}: none).
    stream: dict[str, Any] = field(default_factory=dict)
    #: ETags of the versions uploads of it sent since ``etag`` (see StagedFile.landing).
    landing: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as the journal stores it (a JSON object)."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "remote_size": self.remote_size,
            "present": [[start, end] for start, end in self.present],
            "etag": self.etag,
            "metadata": self.metadata,
            "base_metadata": self.base_metadata,
            "headers": self.headers,
            "mtime": self.mtime,
            "atime": self.atime,
            "ctime": self.ctime,
            "dirty": self.dirty,
            "upload_ids": self.upload_ids,
            "digests": [[off, n, digest] for (off, n), digest in sorted(self.digests.items())],
            "released": [[start, end] for start, end in self.released],
            "stream": self.stream,
            "landing": self.landing,
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> StagedRecord:
        """A record from what :meth:`to_json` (or an earlier version) wrote."""
        mtime = state.get("mtime")
        return cls(
            bucket=str(state.get("bucket", "")),
            key=state["key"],
            size=int(state.get("size", 0)),
            dirty=bool(state.get("dirty")),
            remote_size=int(state.get("remote_size", 0)),
            present=[(int(start), int(end)) for start, end in state.get("present", [])],
            etag=state.get("etag", ""),
            metadata=dict(state.get("metadata", {})),
            base_metadata=None if state.get("base_metadata") is None else dict(state["base_metadata"]),
            headers=dict(state.get("headers", {})),
            mtime=float(mtime) if mtime is not None else None,
            atime=state.get("atime"),
            ctime=state.get("ctime"),
            upload_ids=list(state.get("upload_ids", [])),
            digests={(int(o), int(n)): str(d) for o, n, d in state.get("digests", [])},
            released=[(int(start), int(end)) for start, end in state.get("released", [])],
            stream=dict(state.get("stream") or {}),
            landing=[str(e) for e in state.get("landing", [])],
        )


class ItemView(NamedTuple):
    """An item's state at one moment, taken under its lock (:meth:`StagedFile.view`).

    ``metadata`` and ``headers`` are the item's own dicts, which are replaced whole,
    never changed in place: copy them before changing them.

    A named tuple, not a frozen dataclass: as immutable, and made in a quarter of the
    instructions (a frozen dataclass sets each of its 15 fields through
    ``object.__setattr__``): a small file written takes ~7 views (round 40).
    """

    key: str
    size: int
    remote_size: int
    etag: str
    metadata: dict[str, str]
    headers: dict[str, str]
    mtime: float
    atime: float | None
    ctime: float | None
    times_pinned: bool
    dirty: bool
    uploading: bool
    unlinked: bool
    generation: int
    followed: int


@dataclass(frozen=True)
class Filled:
    """What :meth:`StagedFile.fill` did with fetched bytes.

    ``held``: they make version ``etag`` wholly local, and are written but not yet
    marked present: the caller checks the ``size`` bytes, then calls
    :meth:`StagedFile.fill_checked` (or :meth:`StagedFile.drop_fetched` with ``generation``).
    """

    written: int
    held: bool = False
    generation: int = 0
    size: int = 0


class ReadStateLike(Protocol):
    """What an item knows of a reader (:class:`~s3fs_mount.fs.prefetch.ReadState`)."""

    #: Every reply through it came from its own stream (GUARDED_BY the item's cond).
    only_streamed: bool


class StagedFile:
    """The local copy of one object. See the module docstring for the locks.

    Other units change an item only through its methods; each field below says
    which lock guards it.
    """

    def __init__(self, cache: StagingCache, item_id: str, key: str, fd: int = -1) -> None:
        self.cache = cache  # immutable after __init__
        self.id = item_id  # immutable after __init__
        self.data_path = os.path.join(cache.root, item_id + ".data")  # immutable after __init__
        self.cond = threading.Condition(threading.Lock())  # immutable after __init__
        self.save_lock = threading.Lock()  # immutable after __init__
        #: GUARDED_BY(cache._lock): changed by StagingCache.rekey (a rename, a conflict name).
        self.key = key
        #: Set by open_fd (at acquire, before any handle has the item; or given, a spare file
        #: already open) and close_fd (at discard, after the last); read without a lock.
        self.fd = fd
        self.size = 0  # GUARDED_BY(cond): the logical size
        self.remote_size = 0  # GUARDED_BY(cond): bytes [0, remote_size) still come from S3 when missing
        self.present = RangeSet()  # GUARDED_BY(cond)
        self.inflight: list[tuple[int, int]] = []  # GUARDED_BY(cond): ranges claimed by a fetch
        self.etag = ""  # GUARDED_BY(cond): the remote version our bytes came from ("" for a new file)
        #: GUARDED_BY(cond). When (the cache's clock, monotonic) ``etag`` became known: a lookup
        #: answered before then is older than what this item knows, and must not replace it (our own
        #: upload moved it on).
        self.etag_since = cache.clock.monotonic()
        #: GUARDED_BY(cond): every x-amz-meta-* to upload with (replaced whole, never changed in place).
        self.metadata: dict[str, str] = {}
        #: GUARDED_BY(cond): the metadata S3's version ``etag`` had when this mount last saw it
        #: (replaced whole; None: not known): what another client's change is told from, when an
        #: upload merges it (:meth:`merge_remote`).
        self.base_metadata: dict[str, str] | None = None
        self.headers: dict[str, str] = {}  # GUARDED_BY(cond): Content-Type and friends (replaced whole)
        self.mtime = time.time()  # GUARDED_BY(cond)
        self.atime: float | None = None  # GUARDED_BY(cond); None: as mtime
        self.ctime: float | None = None  # GUARDED_BY(cond); None: as mtime
        #: GUARDED_BY(cond): times set by utimens since the last reset: they must reach S3.
        self.times_pinned = False
        self.dirty = False  # GUARDED_BY(cond)
        self.uploading = False  # GUARDED_BY(cond): set by begin_upload, cleared by end_upload
        self.generation = 0  # GUARDED_BY(cond): bumped by every change to content or metadata
        #: GUARDED_BY(cond): how many versions of other clients the item has followed (:meth:`adopt`:
        #: an open, a stat or a read found one). A handle that has read bytes of the version before
        #: goes on only while this stays, or where the new one holds those bytes (operations' Pin).
        self.followed = 0
        self.open_count = 0  # GUARDED_BY(cache._lock)
        #: GUARDED_BY(cache._lock), but write() moves it under cond: only an order for eviction.
        self.last_used = time.monotonic()
        self.unlinked = False  # GUARDED_BY(cache._lock); read under either lock
        #: GUARDED_BY(cond): multipart uploads under way, aborted after a crash (the upload unit
        #: adds and forgets them through add_upload and forget_upload).
        self.upload_ids: list[str] = []
        #: GUARDED_BY(cond). (offset, length) -> digest (``CRC32:...``, ``MD5:...``) of those staged
        #: bytes as an upload sent them: recovery checks the data file against them. A write over a
        #: range drops it.
        self.digests: dict[tuple[int, int], str] = {}
        #: GUARDED_BY(cond): ranges punched out of the data file, in S3 only as parts of the
        #: upload ``stream`` describes (see the module docstring); never in ``present``.
        self.released = RangeSet()
        #: GUARDED_BY(cond): the upload unit's description of that upload (replaced whole; {}: none).
        self.stream: dict[str, Any] = {}
        #: GUARDED_BY(cond): the ETags of the versions uploads sent since version ``etag`` (a PUT's
        #: MD5, a multipart upload's composite), recorded before each is sent: after a crash, S3
        #: holding one of them holds ours (sent, then killed before the record said so), not
        #: another client's. Cleared once an upload's version is ``etag``.
        self.landing: list[str] = []
        #: GUARDED_BY(cond): ranges being read from the data file now: not released meanwhile.
        self.reading: list[tuple[int, int]] = []
        #: GUARDED_BY(cond): the version whose pages the kernel holds are all checked bytes of it
        #: (:meth:`checked`), "" while none is; the item's ``generation`` then (any write,
        #: truncate, metadata change or reset since ends it); and the reader (its ReadState)
        #: whose stream checked them, whose later replies from that stream keep it so.
        self.checked_etag = ""
        self.checked_generation = -1
        self.checked_by: object = None
        #: GUARDED_BY(cond): a version this item was (or is) at whose bytes a check of the whole
        #: passed, and what each aligned piece of them hashes to (:meth:`record_pieces`).
        self.pieces_checked: tuple[str, PieceDigests] | None = None
        #: GUARDED_BY(cond): every change to the item's bytes since it was last a plain copy of a
        #: version in S3 was a write through the kernel, whose pages of the file are then these
        #: bytes (:meth:`kernel_pages_written_here`). Set by a write; cleared by a reset (another
        #: version) and by fetched bytes failing their check (:meth:`drop_fetched`).
        self.written_here = False
        #: GUARDED_BY(cache._lock): another handle was open at once with the one opened last alone
        #: (set by an open that makes two or more, cleared by one that makes one).
        self.overlapped = False
        #: GUARDED_BY(cond): ``(start, etag, generation)``: an O_APPEND write made the item's
        #: ``generation``, and every change since version ``etag`` (all local then) was one, our
        #: appended bytes beginning at ``start`` (that version's size). It holds only while the
        #: item is still at that version and generation (:meth:`_appended_from`): any other change
        #: moves one of them on (every change bumps the generation; an upload, a rename's copy or
        #: another version, the ETag), so none has to say it ends it. An upload that meets another
        #: client's version then adds our appends to theirs (:meth:`rebase_appends`), as O_APPEND
        #: does on one disk. None: no appends alone.
        self.appends: tuple[int, str, int] | None = None
        #: GUARDED_BY(cond): the kernel's pages of the file may hold bytes the item no longer has
        #: there (our appends moved after another client's version: :meth:`rebase_appends`): no
        #: open keeps them (:meth:`kernel_pages_written_here`), whatever is written since, until an
        #: open has had the kernel drop them (:meth:`pages_dropped`).
        self.pages_moved = False
        #: Guards ``pages_of``, and with it the handles' pins (operations: an open's look at them
        #: and its drop of the pages, a read's take of them and its pin, are one step each).
        self.pages_lock = threading.Lock()
        #: GUARDED_BY(pages_lock): the version (a count of :attr:`followed`) whose bytes reads
        #: have put in the kernel's pages of the file since an open last had the kernel drop them
        #: (None: none). The kernel serves every handle from those pages unasked, so they must
        #: never hold two versions' bytes (:meth:`pages_take`).
        self.pages_of: int | None = None
        #: GUARDED_BY(cond): how many times :meth:`rebase_appends` has changed the file's bytes
        #: under the handles open: a handle open for reading then may have had any of them, from
        #: us or from the kernel's pages written here (operations' ``_keep_version``).
        self.moves = 0

    # -- state ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.uploading:
            return UPLOADING
        return DIRTY if self.dirty else CLEAN

    def view(self) -> ItemView:
        """The item's state at one moment (under its lock)."""
        with self.cond:
            return ItemView(
                key=self.key,
                size=self.size,
                remote_size=self.remote_size,
                etag=self.etag,
                metadata=self.metadata,
                headers=self.headers,
                mtime=self.mtime,
                atime=self.atime,
                ctime=self.ctime,
                times_pinned=self.times_pinned,
                dirty=self.dirty,
                uploading=self.uploading,
                unlinked=self.unlinked,
                generation=self.generation,
                followed=self.followed,
            )

    def open_fd(self) -> None:
        with self.cond:  # two acquires of a known item at once open it once
            if self.fd < 0:
                self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def record(self) -> StagedRecord:
        """What the journal keeps of this item."""
        with self.cond:
            return self._record()

    def _record(self) -> StagedRecord:
        """record's work; the caller holds cond."""
        return StagedRecord(
            bucket=self.cache.bucket,
            key=self.cache.prefix + self.key,
            size=self.size,
            dirty=self.dirty,
            remote_size=self.remote_size,
            present=[(start, end) for start, end in self.present.as_list()],
            etag=self.etag,
            metadata=dict(self.metadata),
            base_metadata=None if self.base_metadata is None else dict(self.base_metadata),
            headers=dict(self.headers),
            mtime=self.mtime,
            atime=self.atime,
            ctime=self.ctime,
            upload_ids=list(self.upload_ids),
            digests=dict(self.digests),
            released=[(start, end) for start, end in self.released],
            stream=self.stream,
            landing=list(self.landing),
        )

    def restore(self, record: StagedRecord) -> None:
        """Take a dirty item's state back from its record (at recovery, before anyone sees it).

        An item is made whole before its first write, so all of it is local but
        its released ranges (whose bytes are in the parts of its recorded upload):
        its data file is the truth for the size (writes reach it before the record).
        """
        self.size = record.size
        self.remote_size = record.remote_size
        self.etag = record.etag
        self.metadata = dict(record.metadata)
        self.base_metadata = None if record.base_metadata is None else dict(record.base_metadata)
        self.headers = dict(record.headers)
        self.mtime = record.mtime if record.mtime is not None else time.time()
        self.atime = record.atime
        self.ctime = record.ctime
        self.dirty = True
        self.upload_ids = list(record.upload_ids)
        self.digests = dict(record.digests)
        self.open_fd()
        self.size = max(self.size, os.fstat(self.fd).st_size)
        self.released = RangeSet(record.released)
        self.stream = dict(record.stream)
        self.landing = list(record.landing)
        self.present = RangeSet([(0, self.size)])
        for start, end in self.released:
            self.present.remove(start, end)

    def save(self, durable: bool = False) -> None:
        """Record the item's state in the journal; with ``durable`` fsync data and record.

        Saves are serialized (``save_lock``), and each takes its snapshot inside
        the lock, so the last record written is always the latest state. A full cache
        disk evicts clean files and tries once more (:meth:`StagingCache.when_full`).
        """
        self.cache.when_full(lambda: self._save(durable), 0, "the record of %s" % self.key)

    def _save(self, durable: bool) -> None:
        """save's work, one try."""
        with self.save_lock:
            with self.cond:
                if self.unlinked:
                    return  # written through a handle after its unlink: nothing to recover
                state = self._record().to_json()
            if durable and self.fd >= 0:
                os.fsync(self.fd)  # the bytes before the record that points at them
            self.cache.journal.record(self.id, state, durable=durable)

    # -- content -------------------------------------------------------------------

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges of ``[start, end)`` that must still come from S3. Caller holds cond."""
        end = min(end, self.remote_size)
        if start >= end:
            return []
        return self.present.missing(start, end)

    def covers(self, start: int, end: int) -> bool:
        """Are all of ``[start, end)`` local, and within the file?"""
        with self.cond:
            return end <= self.size and self.present.covers(start, end)

    def read(self, offset: int, size: int) -> bytes:
        """Local bytes; the caller has made sure they are present.

        :raises ReleasedRange: some were released (the caller completes the upload holding them).
        """
        with self.cond:
            size = max(0, min(size, self.size - offset))
            if not size:
                return b""
            span = (offset, offset + size)
            if self.released.overlaps(*span):
                raise ReleasedRange("%s: bytes %d-%d" % (self.key, offset, offset + size - 1))
            self.reading.append(span)
        try:
            return os.pread(self.fd, size, offset)
        finally:
            with self.cond:
                self.reading.remove(span)
                self.cond.notify_all()

    def checked(self, etag: str, reader: ReadStateLike) -> bool:
        """``reader`` read all of version ``etag`` from a stream of its own whose check (the whole
        object's checksum, or ETag) passed, and it is the only handle opened since its own open, so
        every page the kernel holds of the file came through it from that stream: an open may keep
        them (:meth:`kernel_may_keep`). Not if any of its replies came from elsewhere, or the item
        is not clean at that version. True if so."""
        # Both locks at once: an open meanwhile (another handle's replies) comes before or after.
        with self.cache._lock, self.cond:
            alone = self.open_count == 1 and not self.overlapped
            if not (alone and reader.only_streamed and etag == self.etag) or self.dirty or self.uploading:
                return False
            self.checked_etag, self.checked_generation, self.checked_by = etag, self.generation, reader
            return True

    def replied(self, reader: ReadStateLike, streamed: bool) -> None:
        """A read through ``reader`` is answered, from its stream or not: the kernel caches the
        bytes. Unless they come from the stream that checked the pages the kernel holds, those
        pages are no longer known to be checked ones (nor, if not streamed, the reader's)."""
        with self.cond:
            if not streamed:
                reader.only_streamed = False
            if self.checked_etag and not (streamed and self.checked_by is reader):
                self.checked_etag, self.checked_by = "", None

    def record_pieces(self, etag: str, pieces: PieceDigests | None) -> None:
        """A check of all of version ``etag`` passed, and left what each aligned piece of it hashes
        to: kept while the item is at that version, so that a range of it fetched again (pages
        the kernel dropped) is checked piece by piece (:meth:`pieces_of`)."""
        if pieces is None:
            return
        with self.cond:
            if etag == self.etag:
                self.pieces_checked = (etag, pieces)

    def pieces_of(self, etag: str) -> PieceDigests | None:
        """What each aligned piece of version ``etag`` hashes to, if a check of it whole passed and
        the item is still at it (else None: a range of it is fetched unchecked)."""
        with self.cond:
            recorded = self.pieces_checked
            if recorded is None:
                return None
            if recorded[0] != self.etag:
                self.pieces_checked = None  # another version now: dropped with the old one
                return None
            return recorded[1] if recorded[0] == etag else None

    def kernel_may_keep(self) -> bool:
        """May an open keep the pages the kernel holds of the file (``keep_cache``): are they all
        checked bytes of the version the item is now, clean (:meth:`checked`)? Otherwise the
        open has the kernel drop them, and reads fetch (and check) again."""
        with self.cond:
            return (
                bool(self.etag)
                and (self.checked_etag, self.checked_generation) == (self.etag, self.generation)
                and not (self.dirty or self.uploading)
            )

    def kernel_pages_written_here(self) -> bool:
        """May an open keep the pages the kernel holds of the file (``keep_cache``) because they are
        this mount's own: the item's bytes were written here (:attr:`written_here`), through the
        kernel, which wrote them into its pages as it sent them, and nothing but those writes
        changed them since (no other version followed, no fetched bytes dropped). An open that
        drops them races with another handle's write under way (see fuselib's ``FUSE``)."""
        with self.cond:
            return self.written_here and not self.pages_moved

    def pages_dropped(self) -> None:
        """An open did not keep the kernel's pages of the file: it has the kernel drop them
        (under :attr:`pages_lock`)."""
        with self.cond:
            self.pages_moved = False
        self.pages_of = None

    def pages_take(self, followed: int) -> bool:
        """A read is about to hand the kernel bytes of the version the item was at ``followed``
        (:attr:`followed`), which it keeps in its pages: True if they hold none of another
        version's (a reader would get those pages beside these bytes, a file of neither version,
        with no error: one mount's readers during another's rewrites in place, round 40), and
        from now on they are that version's; False (the read must not answer) otherwise.
        Under :attr:`pages_lock`."""
        if self.pages_of is not None and self.pages_of != followed:
            return False
        self.pages_of = followed
        return True

    def pages_carry(self, old: int, new: int) -> None:
        """The version at ``new`` holds the bytes of the one at ``old`` (a handle's pin moved on:
        the same bytes, or them and more): pages of the old one are pages of the new. Under
        :attr:`pages_lock`."""
        if self.pages_of == old:
            self.pages_of = new

    def sent(self, start: int, end: int) -> None:
        """An upload has read ``[start, end)`` and S3 has it (a part): the page cache may let the
        bytes go, as they are on the cache's disk (:func:`drop_from_page_cache`). A file
        system that cannot leaves them cached (a debug line), as does a failed write-out (a
        warning: the bytes stay in the page cache, dirty, and an fsync reports the error)."""
        fd = self.fd
        if fd < 0:
            return
        try:
            drop_from_page_cache(fd, start, end)
        except OSError as exc:
            unsupported = exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE)
            log.log(
                logging.DEBUG if unsupported else logging.WARNING,
                "%s: bytes %d-%d stay in the page cache: %s",
                self.key,
                start,
                end - 1,
                exc,
            )

    def released_within(self, start: int, end: int) -> bool:
        """Were any of ``[start, end)`` released (see :meth:`release`)?"""
        with self.cond:
            return self.released.overlaps(start, end)

    def released_ranges(self) -> list[tuple[int, int]]:
        """The ranges released (see :meth:`release`)."""
        with self.cond:
            return list(self.released)

    def has_released(self) -> bool:
        """Are any of the item's bytes in S3 only, as parts of an upload under way?"""
        with self.cond:
            return bool(self.released.total())

    def recorded_stream(self) -> dict[str, Any]:
        """What the record keeps of the upload holding the released ranges ({}: none)."""
        with self.cond:
            return self.stream

    def release(self, ranges: list[tuple[int, int]], stream: dict[str, Any]) -> int:
        """Free the cache of ``ranges``, sent as parts of the upload ``stream`` describes (what the
        upload unit needs to finish it after a crash); returns the bytes freed.

        The record says so, durably, before a byte is punched out: a crash in between leaves
        bytes both local and released, never neither. Ranges being read now wait for the read.
        """
        with self.cond:
            if self.unlinked or not self.dirty:
                return 0
            while any(_overlaps(r, self.reading) for r in ranges):
                self.cond.wait()
            for start, end in ranges:
                self.released.add(start, end)
                self.present.remove(start, end)
            self.stream = dict(stream)
            fd = self.fd
        self.save(durable=True)
        freed = 0
        for start, end in ranges:
            try:
                punch_hole(fd, start, end)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("%s: the cache's file system cannot free part of a file (%s)", self.key, exc)
                return freed
            freed += end - start
        self.cache.shrank(freed)
        return freed

    def write(self, offset: int, data: bytes, append: bool = False) -> int:
        """Write locally and mark the item dirty (recorded before this returns, so a crash knows).

        With ``append`` the bytes go at the end as it is when the lock is
        taken, so writers appending through several handles never overlap. A full cache
        disk evicts clean files and tries once more (:meth:`StagingCache.when_full`), also
        for the rest of a write the disk took part of. What is still refused after that makes a
        short write: the count of the bytes written (local, dirty and recorded as any write),
        as write(2) answers on a full disk.
        """
        what = "a write to %s" % self.key
        done = self.cache.when_full(lambda: self._write(offset, data, append), len(data), what)
        if 0 < done < len(data) and self.cache.free_disk(len(data) - done, what):
            try:
                done += self._write(offset + done, memoryview(data)[done:], append)
            except OSError as exc:
                if not disk_full(exc):
                    raise
        return done

    def _write(self, offset: int, data: bytes | memoryview, append: bool) -> int:
        """write's work, one try."""
        with self.cond:
            while True:
                appended_from = -1
                if append:
                    offset = self.size
                    if not self.dirty:  # the first change since the item was version etag's
                        whole = self.size == self.remote_size and self.present.covers(0, self.size)
                        appended_from = self.size if self.etag and whole else -1
                    else:
                        appended_from = self._appended_from()
                end = offset + len(data)
                if self.released.overlaps(offset, end):
                    raise ReleasedRange("%s: bytes %d-%d" % (self.key, offset, end - 1))
                # A fetch of these bytes still in flight would overwrite them: wait for it.
                if not _overlaps((offset, end), self.inflight):
                    break
                self.cond.wait()
            end = offset + pwrite_some(self.fd, data, offset)
            self.present.add(offset, end)
            # A digest the record holds of bytes written over would fail recovery's check: re-record.
            digests_dropped = bool(self.digests) and self._drop_digests(offset, end)
            self.size = max(self.size, end)
            self.mtime = self.ctime = time.time()
            self.generation += 1
            if appended_from >= 0:  # appends alone still: they hold at this generation too
                self.appends = (appended_from, self.etag, self.generation)
            self.written_here = True
            became_dirty = not self.dirty
            self.dirty = True
            self.last_used = time.monotonic()
        if became_dirty or digests_dropped:
            self.save()
        self.cache.grew(end - offset)
        return end - offset

    def truncate(self, length: int) -> None:
        with self.cond:
            while any(e > length for s, e in self.inflight):
                self.cond.wait()
            os.ftruncate(self.fd, length)
            self._drop_digests(min(length, self.size), 1 << 62)
            self.present.remove_from(length)
            self.remote_size = min(self.remote_size, length)
            if length > self.size:
                self.present.add(self.size, length)  # the new bytes are zeros, and local
            self.size = length
            self.mtime = self.ctime = time.time()
            self.generation += 1
            self.dirty = True
        self.save()

    # -- fetching remote bytes (the prefetcher's three steps) ----------------------------

    def claim_missing(self, start: int, end: int, grid: int = 0, wait: bool = True) -> list[tuple[int, int]]:
        """Ranges of ``[start, end)`` still to fetch from S3, now marked in flight (claimed) for
        the caller, who must :meth:`fill` them and then :meth:`unclaim` them, even on failure.

        With ``grid`` the ranges are cut at multiples of it. Ranges another fetch has
        claimed are left to it; with ``wait``, when every missing range is claimed by
        others, this waits for them and looks again. ``[]``: nothing (else) to fetch.
        """
        with self.cond:
            while True:
                pieces = []
                for gs, ge in self.missing(start, end):
                    pos = gs
                    while pos < ge:
                        piece = (pos, min(ge, (pos // grid + 1) * grid) if grid else ge)
                        pieces.append(piece)
                        pos = piece[1]
                mine = [p for p in pieces if not _overlaps(p, self.inflight)]
                if mine or not pieces or not wait:
                    self.inflight.extend(mine)
                    return mine
                self.cond.wait()

    def fill(self, start: int, end: int, data: bytes, etag: str, hold_whole: bool = False) -> Filled | None:
        """Bytes of version ``etag`` fetched for the claimed range ``[start, end)``: write them, and
        mark the range present. A short ``data`` means the object ends there: the rest reads as
        zeros. None when they are not wanted (the item moved to another version, or is closed).

        With ``hold_whole``, bytes that make the clean item's version wholly local are written
        but not marked present (see :class:`Filled`): no reader sees them before they are checked.
        """
        with self.cond:
            data = data[: max(0, min(end, self.remote_size) - start)]

        def attempt() -> bool:
            with self.cond:
                fd = self.fd
                if self.etag != etag or fd < 0:
                    return False
            # Outside the lock: the range is claimed, and readers need the lock meanwhile.
            pwrite_all(fd, data, start)
            return True

        if not self.cache.when_full(attempt, len(data), "a read of %s" % self.key):
            return None
        with self.cond:
            held = hold_whole and self._completes(etag, start, end)
            if not held:
                self.present.add(start, end)
            return Filled(len(data), held, self.generation, self.remote_size)

    def _completes(self, etag: str, start: int, end: int) -> bool:
        """Does ``[start, end)`` make version ``etag`` wholly local? Never for a file being
        written: its bytes are not only S3's. (Caller holds cond.)"""
        if not etag or self.etag != etag or self.dirty or self.uploading:
            return False
        size = self.remote_size
        return self.present.covers(0, min(start, size)) and self.present.covers(end, size)

    def fill_checked(self, start: int, end: int, etag: str) -> None:
        """The held bytes of ``[start, end)`` passed their check: present, if still of ``etag``."""
        with self.cond:
            if self.etag == etag:
                self.present.add(start, end)

    def unclaim(self, claimed: list[tuple[int, int]]) -> None:
        """The fetch of ``claimed`` ranges is over (filled or failed): others may fetch them."""
        with self.cond:
            for piece in claimed:
                if piece in self.inflight:
                    self.inflight.remove(piece)
            self.cond.notify_all()

    def remote_gaps(self, start: int, end: int) -> list[tuple[int, int]] | None:
        """Ranges of ``[start, end)`` not local, when the item is a clean copy of a version in S3
        and the range lies in it; None when its bytes are not only S3's (written here, or never
        remote): the staged file has them all."""
        with self.cond:
            if not self.etag or self.dirty or self.uploading or not end <= self.remote_size == self.size:
                return None
            return self.missing(start, end)

    # -- digests ---------------------------------------------------------------------

    def note_digest(self, offset: int, length: int, digest: str) -> None:
        """An upload read ``[offset, offset+length)`` and sent it with this digest (``CRC32:...``,
        ``MD5:...``): recorded, so that recovery can tell whether the data file still holds it."""
        with self.cond:
            self.digests[(offset, length)] = digest

    def _drop_digests(self, start: int, end: int) -> bool:
        """Bytes of ``[start, end)`` change: their digests no longer hold (caller holds cond).
        Returns whether any was dropped."""
        dropped = [r for r in self.digests if r[0] < end and start < r[0] + r[1]]
        for r in dropped:
            del self.digests[r]
        return bool(dropped)

    def damaged_ranges(self) -> list[tuple[int, int]]:
        """Recorded ranges whose bytes in the data file no longer have their digest."""
        with self.cond:
            recorded = dict(self.digests)
            released = RangeSet(self.released)
        bad = []
        for (off, n), digest in sorted(recorded.items()):
            if released.overlaps(off, off + n):
                continue  # punched out on purpose: the bytes are in the recorded upload's parts
            chunks = (
                os.pread(self.fd, min(1 << 20, off + n - at), at) for at in range(off, off + n, 1 << 20)
            )
            if digest_of_bytes(digest.partition(":")[0], chunks) != digest:
                bad.append((off, n))
        return bad

    # -- metadata and times ----------------------------------------------------------------

    def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the pending metadata (it rides along with the next upload); its times are the item's."""
        with self.cond:
            self.metadata = dict(metadata)
            self._times_from(self.metadata)
            self.generation += 1
            self.dirty = True
        self.save()

    def metadata_stored(self, metadata: dict[str, str], etag: str) -> None:
        """S3 now has ``metadata`` on version ``etag`` of a clean copy: take them (and its times) over."""
        with self.cond:
            self.metadata = dict(metadata)
            self.base_metadata = dict(metadata)
            self._times_from(self.metadata)
            self.etag = etag

    def followed_copy(self, old: str, etag: str, metadata: dict[str, str], headers: dict[str, str]) -> bool:
        """S3's version ``etag`` holds the bytes of version ``old``, the clean item's, with
        ``metadata`` (a copy that changed only them, under a new ETag): the item is of it now,
        its local bytes kept. False (nothing done) when the item is not clean at ``old``."""
        with self.cond:
            if self.etag != old or self.dirty or self.uploading:
                return False
            self.metadata, self.headers = dict(metadata), dict(headers)
            self.base_metadata = dict(metadata)
            self._times_from(self.metadata)
            self.etag = etag
            self.etag_since = self.cache.clock.monotonic()
            return True

    def merge_remote(self, theirs: dict[str, str]) -> MetadataMerge:
        """S3's version ``etag`` (still the one our bytes came from) now carries ``theirs``:
        another client's metadata-only change (a self-copy keeps the ETag). Merge it into the
        pending metadata (:func:`~s3fs_mount.fs.attrs.merge_metadata`, against
        ``base_metadata``), which the upload under way then carries; ``theirs`` becomes the base.
        Not a change of ours: the generation stays (the upload of it carries the merge)."""
        with self.cond:
            ours = {**self.metadata, **time_metadata(self.mtime, self.atime, self.ctime)}
            merge = merge_metadata(self.base_metadata, ours, theirs)
            if merge.metadata != ours:
                self.metadata = dict(merge.metadata)
                self._times_from(self.metadata)
            self.base_metadata = dict(theirs)
            return merge

    def _times_from(self, metadata: dict[str, str]) -> None:
        """Take mtime/atime/ctime from ``metadata`` where it has them (caller holds cond)."""
        mtime = parse_time(metadata.get(MTIME, ""))
        if mtime is not None:
            self.mtime = mtime
        self.atime = parse_time(metadata.get(ATIME, "")) if ATIME in metadata else self.atime
        self.ctime = parse_time(metadata.get(CTIME, "")) if CTIME in metadata else self.ctime

    def saw_atime(self, atime: float | None) -> None:
        """S3 (or the namespace) knows an access time: keep the later of it and ours."""
        if atime is None:
            return
        with self.cond:
            if self.atime is None or self.atime < atime:
                self.atime = atime

    def accessed(self, now: float) -> bool:
        """A first read through a handle at ``now``: move atime if ``relatime`` says so. True when
        it moved on a clean item (then the caller stores it; a pending upload stores a dirty one's)."""
        with self.cond:
            if not relatime_due(self.atime, self.mtime, self.ctime, now):
                return False
            self.atime = now
            return not (self.dirty or self.uploading or self.unlinked)

    def pin_times(self) -> None:
        """Times were set (utimens): the next upload must store them, even after a stream."""
        with self.cond:
            self.times_pinned = True

    # -- uploads (the upload unit's view of the item) -----------------------------------

    def begin_upload(self) -> tuple[int, str] | None:
        """An upload starts: ``(generation, etag it may replace)``, or None when clean (or unlinked).
        The item is ``uploading`` until :meth:`end_upload`."""
        with self.cond:
            if not self.dirty or self.unlinked:  # written through a handle after its unlink: never sent
                return None
            self.uploading = True
            return self.generation, self.etag

    def end_upload(self) -> None:
        """The upload :meth:`begin_upload` started is over (done or failed)."""
        with self.cond:
            self.uploading = False

    def stored_as(self, etag: str) -> None:
        """S3 holds the item's bytes as version ``etag`` now (a rename's copy), or nothing (``""``:
        it moved to a new name)."""
        with self.cond:
            self.etag = etag

    def note_landing(self, etag: str) -> None:
        """An upload is about to send version ``etag`` (see :attr:`landing`); the caller saves
        the record before it sends."""
        if not etag:
            return
        with self.cond:
            if etag not in self.landing:
                self.landing = [*self.landing[-7:], etag]

    def sent_as(self, etag: str) -> bool:
        """Is ``etag`` a version an upload of ours sent since the item's version (:attr:`landing`)?"""
        with self.cond:
            return bool(etag) and etag in self.landing

    def landed(self, etag: str, metadata: dict[str, str]) -> None:
        """After a crash: S3 holds version ``etag`` (with ``metadata``), which an upload of ours
        sent (:meth:`sent_as`); the item, still dirty, goes on from it."""
        with self.cond:
            self.etag = etag
            self.base_metadata = dict(metadata)
            self.landing = []

    def add_upload(self, upload_id: str) -> None:
        """A multipart upload of the item began: recorded, so that a crash leaves no dangling parts."""
        with self.cond:
            self.upload_ids.append(upload_id)
        self.save()

    def pending_uploads(self) -> list[str]:
        """The multipart uploads of the item still owed a completion or an abort."""
        with self.cond:
            return list(self.upload_ids)

    def forget_upload(self, upload_id: str) -> None:
        """A multipart upload of ours is finished or aborted: no longer owed an abort."""
        with self.cond:
            if upload_id in self.upload_ids:
                self.upload_ids.remove(upload_id)

    def mark_clean(
        self,
        generation: int,
        etag: str,
        uploaded_size: int | None = None,
        changed: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """After an upload of ``generation`` (``uploaded_size`` bytes, carrying ``metadata``, the
        new ``base_metadata``; None: not known): clean unless it changed
        meanwhile (or the upload says it may lack some of its bytes: ``changed``).

        Either way S3 now holds version ``etag``, and every handle of the item
        moves to it: its bytes are all local, so no read asks S3 for the old one;
        but released ranges, which are now that version's (missing, they are fetched).
        """
        with self.cond:
            appends_alone = self._appended_from() >= 0  # (of the version before this one)
            # A gap past the bytes the item had of S3 that is not released is a hole (a truncate,
            # a write past the end, maybe while this upload ran): zeros here, and in what was
            # uploaded of this generation. Local, then: S3's new version, from a generation before
            # a truncate, may hold old bytes there.
            for start, end in self.present.missing(self.remote_size, self.size):
                for hole in self.released.missing(start, end):
                    self.present.add(*hole)
            self.released = RangeSet()
            self.stream = {}
            self.etag = etag
            self.landing = []
            self.etag_since = self.cache.clock.monotonic()
            self.base_metadata = None if metadata is None else dict(metadata)
            self.remote_size = self.size if uploaded_size is None else min(uploaded_size, self.size)
            if changed or self.generation != generation:
                # Still dirty: appends made during the upload follow the version it stored.
                if appends_alone and not changed:
                    self.appends = (self.remote_size, self.etag, self.generation)
                return False
            self.dirty = False
            keep = bool(self.upload_ids)  # aborts still owed: the record remembers them
        if keep:
            self.save()
        else:
            self.drop_record()
        return True

    def appended_to(self, etag: str) -> int:
        """The bytes our appends follow when the item is dirty by appends alone to version
        ``etag`` (:attr:`appends`), all local; else -1."""
        with self.cond:
            if self.etag != etag or not self.dirty or self.released.total() or self.unlinked:
                return -1
            return self._appended_from()

    def _appended_from(self) -> int:
        """Where our appended bytes begin while every change since version ``etag`` was an
        O_APPEND write (:attr:`appends` still of this version and generation); else -1.
        (Caller holds cond.)"""
        appends = self.appends
        if appends is None or appends[1:] != (self.etag, self.generation):
            return -1
        return appends[0]

    def rebase_appends(
        self, replaces: str, etag: str, theirs: bytes, metadata: dict[str, str], headers: dict[str, str]
    ) -> int | None:
        """S3's version ``etag`` (``theirs``: its bytes, with ``metadata`` and ``headers``)
        replaced version ``replaces``, to which the item's changes are appends alone
        (:meth:`appended_to`): the item becomes theirs followed by our appended bytes, still dirty,
        of version ``etag``, as if our appends came after theirs (what O_APPEND does on one disk).
        Returns the new generation, or None (nothing done) when the item is no longer so.

        Our appended bytes are written at their new place first and the record saved last: a
        crash in between leaves the old record, whose upload (conditional on ``replaces``) then
        keeps the data file, ours in it, under a conflict name, as before appends were rebased."""
        with self.cond:
            while self.inflight or self.reading:  # a fetch or a read of the bytes moved
                self.cond.wait()
            start = self._appended_from()
            if self.etag != replaces or not self.dirty or start < 0 or self.released.total():
                return None
            ours = os.pread(self.fd, self.size - start, start)
            if len(ours) != self.size - start:
                return None
            self.moves += 1
            pwrite_all(self.fd, ours, len(theirs))
            pwrite_all(self.fd, theirs, 0)
            self.size = len(theirs) + len(ours)
            os.ftruncate(self.fd, self.size)
            self.present = RangeSet([(0, self.size)]) if self.size else RangeSet()
            self.remote_size = len(theirs)
            self.etag = etag
            self.etag_since = self.cache.clock.monotonic()
            self.landing = []
            self.digests = {}  # of bytes that moved
            self.headers = dict(headers)
            # Their metadata, but our times: the appends are the file's latest change.
            ours_meta = {**self.metadata, **time_metadata(self.mtime, self.atime, self.ctime)}
            self.metadata = dict(merge_metadata(self.base_metadata, ours_meta, metadata).metadata)
            self._times_from(self.metadata)
            self.base_metadata = dict(metadata)
            self.written_here = False
            self.pages_moved = True  # the kernel's pages hold the old bytes: the next open drops them
            self.checked_etag, self.checked_by = "", None
            self.generation += 1
            generation = self.generation
            self.appends = (len(theirs), etag, generation)  # ours follow theirs: appends alone still
        self.save()
        return generation

    def holes(self) -> list[tuple[int, int]]:
        """Ranges of a dirty item that are not local but in S3's version ``etag`` (left when bytes
        were written during the upload that completed a stream with released ranges)."""
        with self.cond:
            return self.missing(0, self.size) if self.dirty else []

    def drop_record(self) -> None:
        """A clean item needs no record: S3 has its content (and recovery skips it)."""
        with self.save_lock:
            self.cache.journal.record(self.id, None)

    def adopt(
        self,
        size: int,
        etag: str,
        metadata: dict[str, str],
        headers: dict[str, str],
        mtime: float,
        seen_at: float,
    ) -> bool:
        """S3 was seen (at ``seen_at``, monotonic) holding version ``etag``: follow it if it is news.

        Only a clean item follows, and only when the sighting is newer than
        what the item knows: of its own version it takes the metadata (another
        client's chmod keeps the ETag), of another version everything. A lookup
        sent before our own upload finished names the version that upload
        replaced, and following it would drop the bytes every open handle is reading.
        Returns True when the local bytes were dropped.
        """
        with self.cond:
            while self.inflight:  # a fetch of the old version would land in the new one's bytes
                self.cond.wait()
            if self.dirty or self.uploading or seen_at <= self.etag_since:
                return False
            if etag == self.etag:  # the same bytes; a chmod elsewhere (a self-copy) keeps the ETag
                self.metadata, self.headers = dict(metadata), dict(headers)
                self.base_metadata = dict(metadata)
                self._times_from(self.metadata)
                return False
            self._reset(size, etag, metadata, headers, mtime)
            self.followed += 1
        self.drop_record()
        return True

    def begin_new(self, metadata: dict[str, str], headers: dict[str, str], made: float) -> None:
        """A new file's item, just made (empty, never recorded, not yet published): dirty with
        ``metadata`` (its times all ``made``, as the metadata holds it), so that an empty new file
        is uploaded too. The caller saves it once published. What :meth:`reset` to nothing then
        :meth:`set_metadata` did, without their work for an item that held something: the data
        file's size asked, a record dropped, the times parsed back from ``metadata`` twice."""
        with self.cond:
            self.etag_since = self.cache.clock.monotonic()
            self.metadata = dict(metadata)
            self.base_metadata = dict(metadata)
            self.headers = dict(headers)
            self.mtime = self.atime = self.ctime = made
            self.generation += 1
            self.dirty = True

    def reset(
        self, size: int, etag: str, metadata: dict[str, str], headers: dict[str, str], mtime: float
    ) -> None:
        """Forget local bytes: the object in S3 is (now) this one."""
        with self.cond:
            while self.inflight:
                self.cond.wait()
            self._reset(size, etag, metadata, headers, mtime)
        self.drop_record()

    def drop_fetched(self, etag: str, generation: int | None = None) -> bool:
        """Forget the bytes fetched of version ``etag`` (they failed a check): read again, they are
        fetched again. Only a clean item's: written bytes are the only copy. With ``generation``,
        only if nothing changed since it (else those are not the bytes that were fetched): False then.
        """
        with self.cond:
            if generation is not None and self.generation != generation:
                return False
            if self.checked_etag == etag:
                self.checked_etag, self.checked_by = "", None
            self.written_here = False  # the kernel may hold the bytes that failed: the next open drops them
            if self.etag == etag and not (self.dirty or self.uploading):
                self.present = RangeSet()
            return True

    def _reset(
        self, size: int, etag: str, metadata: dict[str, str], headers: dict[str, str], mtime: float
    ) -> None:
        """reset's work; the caller holds cond."""
        if size or os.fstat(self.fd).st_size:  # a new file's (empty) needs neither
            os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, size)
        self.present = RangeSet()
        self.released = RangeSet()
        self.stream = {}
        self.size = self.remote_size = size
        self.etag = etag
        self.etag_since = self.cache.clock.monotonic()
        self.metadata = dict(metadata)
        self.base_metadata = dict(metadata)
        self.headers = dict(headers)
        self.mtime = mtime
        self.atime = self.ctime = None
        self.times_pinned = False
        self._times_from(self.metadata)
        self.mtime = mtime
        self.dirty = False
        self.generation += 1
        self.digests = {}  # they were the old version's
        self.written_here = False

    def local_bytes(self) -> int:
        try:
            return os.stat(self.data_path).st_blocks * 512
        except OSError:
            return 0


def _overlaps(r: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(s < r[1] and r[0] < e for s, e in others)


class CacheInUse(OSError):
    """Another mount holds this staging directory."""


class StagingCache:
    """All staged files of one mount, bounded by ``capacity`` bytes.

    :param root: the directory to keep files in (created 0700).
    :param bucket: recorded with each item, so recovery knows where a file goes.
    :param prefix: the mount's key prefix: items have the mount's keys (relative to it), records
        the keys in the bucket, so that a record says where its file goes whoever reads it.
    :param capacity: clean files are evicted, least recently used first,
        when the cache holds more than this. Dirty files are never evicted. When the cache
        directory's file system has less room (its free space and what the cache already
        holds there), that room is the bound, with a warning: see :meth:`_bound_by_disk`.
    :param keep_written: a file written here stays cached after its upload
        only up to this size (see :meth:`uploaded`).
    :param clock: what an item's version time is read off: the namespace's, so the two compare.
    """

    def __init__(
        self,
        root: str,
        bucket: str,
        capacity: int,
        keep_written: int = 16 << 20,
        clock: Clock = SYSTEM,
        prefix: str = "",
    ) -> None:
        self.root = root  # immutable after __init__ (as every field to keep_written, and journal)
        self.prefix = prefix
        self.clock = clock
        self.bucket = bucket
        self.capacity = capacity
        self.keep_written = keep_written
        # The cache dir too is made 0700 when we create it (an existing one is left as it is).
        os.makedirs(os.path.dirname(os.path.abspath(root)), mode=0o700, exist_ok=True)
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        # One mount per staging dir: another one would "recover" files this one is writing.
        self._lock_fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise CacheInUse(
                "the cache %s is in use by another mount of this bucket: give this one -o cache_dir=" % root
            ) from None
        self.journal = StagingJournal(root)
        #: Empty data files made ahead for new items, once recovery has run (see spares.py).
        self._spares = SpareFiles(root)
        try:
            #: What the last run left: taken by recover(), before the mount serves.
            self._recorded = self.journal.open()
        except BaseException:
            self.close()
            raise
        #: The bound asked for (cache_size); ``capacity`` is the one used. Immutable after __init__.
        self.cache_size = capacity
        self.capacity = self._bound_by_disk(capacity)
        self._lock = threading.Lock()
        self._items: dict[str, StagedFile] = {}  # GUARDED_BY(_lock)
        #: GUARDED_BY(_lock). An upper bound on usage() without stat'ing every file; evict() makes it exact.
        self._estimate = 0
        #: (key, upload id) of multipart uploads clean files still owe an abort. Written by
        #: recover, before the mount serves; read after it.
        self.orphan_uploads: list[tuple[str, str]] = []
        #: Keys whose staged copy recovery found changed on disk (kept, never uploaded); as orphan_uploads.
        self.damaged: list[str] = []

    def _bound_by_disk(self, capacity: int) -> int:
        """``capacity``, or less when the cache's file system cannot hold that much: the room
        there (its free space and the bytes the cache directory already holds), with a warning.

        Bounding, not only warning: the bound is what makes a file larger than the cache
        give back its parts already in S3 and writeback wait for its uploads before the
        disk is full, rather than a write failing with ENOSPC (see README, "cache_size").
        """
        held = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    held += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
        room = disk_room(self.root) + held
        if capacity > room:
            log.warning(
                "cache_size %s is more than the cache directory %s can hold (%s free on its file "
                "system, %s held by the cache): the cache is bounded at %s",
                human_size(capacity),
                self.root,
                human_size(room - held),
                human_size(held),
                human_size(room),
            )
            return room
        return capacity

    def close(self) -> None:
        """Let another mount use this directory (ours has stopped)."""
        self._spares.close()
        self.journal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def get(self, key: str) -> StagedFile | None:
        with self._lock:
            return self._items.get(key)

    def items(self) -> list[StagedFile]:
        with self._lock:
            return list(self._items.values())

    def pending(self) -> list[StagedFile]:
        """Items whose latest content is not in S3 yet."""
        return [i for i in self.items() if i.dirty and not i.unlinked]

    def under(self, prefix: str) -> Iterator[StagedFile]:
        """Live staged items whose key starts with ``prefix``."""
        for item in self.items():
            if item.key.startswith(prefix) and not item.unlinked:
                yield item

    @staticmethod
    def _count_open(item: StagedFile) -> None:
        """One more open of ``item`` (caller holds ``_lock``): counted, used now, and overlapped
        if another handle is open with it."""
        item.open_count += 1
        item.overlapped = item.open_count > 1
        item.last_used = time.monotonic()

    def acquire(self, key: str, setup: Callable[[StagedFile], None] | None = None) -> tuple[StagedFile, bool]:
        """The item for ``key`` (opened, counted), and whether it is new.

        A new item is made, opened and given ``setup`` (say, the version an open looked up)
        before anyone else can find it: an open, stat or read of the same key at the same
        moment gets the item once it says what it holds, never a new item's size of 0
        (four readers of one object once got 0 bytes, and the kernel took that short read
        as the file's end). Two opens that make one at once keep the first published.
        """
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._count_open(item)
        if item is None:
            spare = self._spares.take()  # (id, fd) of a file made ahead, else open_fd makes one
            item_id, fd = spare if spare is not None else (uuid.uuid4().hex, -1)
            made = StagedFile(self, item_id, key, fd)
            try:
                self.when_full(made.open_fd, 0, "a new cache file for %s" % key)
                if setup is not None:
                    setup(made)
            except BaseException:
                made.close_fd()
                _remove(made.data_path)
                raise
            with self._lock:
                item = self._items.setdefault(key, made)
                self._count_open(item)
            if item is made:
                return item, True
            made.close_fd()
            _remove(made.data_path)
        try:
            item.open_fd()
        except OSError:
            self.release(item)
            raise
        return item, False

    def left_dirty(self, item: StagedFile) -> bool:
        """Is ``item`` (the cache's copy of its key, not unlinked) dirty with no handle open, so
        that no release will have it uploaded?"""
        with self._lock:
            closed = item.open_count <= 0 and not item.unlinked and self._items.get(item.key) is item
        return closed and item.view().dirty

    def reopen(self, item: StagedFile) -> bool:
        """One more open of ``item``, unlinked while open; False if its last handle has closed
        meanwhile (it is gone)."""
        with self._lock:
            if item.unlinked and item.open_count <= 0:
                return False
            self._count_open(item)
            return True

    def release(self, item: StagedFile) -> None:
        """One open handle fewer; an unlinked, closed item goes away."""
        with self._lock:
            item.open_count -= 1
            item.last_used = time.monotonic()
            gone = item.open_count <= 0 and item.unlinked
        if gone:
            self.discard(item)
        else:
            self._maybe_evict()

    def uploaded(self, item: StagedFile) -> None:
        """A written file is in S3 and closed: a large one leaves the cache now.

        Its pages are then freed unwritten instead of going to disk in the
        background (1 GiB of writeback slowed what the mount did next), and a
        sequential read of it streams from S3 anyway. Small files stay.
        """
        with self._lock:
            if (
                item.size <= self.keep_written
                or item.open_count > 0
                or item.dirty
                or item.uploading
                or self._items.get(item.key) is not item
            ):
                return
            del self._items[item.key]
        log.debug("dropping %s (%d bytes) from the cache: uploaded", item.key, item.size)
        self.discard(item)

    def rekey(self, old: str, new: str) -> None:
        """A file was renamed: its staged item follows it."""
        with self._lock:
            item = self._items.pop(old, None)
            if item is None:
                return
            replaced = self._items.pop(new, None)
            item.key = new
            self._items[new] = item
        if replaced is not None and replaced is not item:
            self._unlink_item(replaced)
        item.save(durable=item.dirty)

    def forget(self, key: str) -> None:
        """The object was deleted: drop its copy (kept until its last close)."""
        with self._lock:
            item = self._items.get(key)
        if item is not None:
            self._unlink_item(item)

    def _unlink_item(self, item: StagedFile) -> None:
        with self._lock:
            if self._items.get(item.key) is item:
                del self._items[item.key]
            item.unlinked = True
            keep = item.open_count > 0
        with item.cond:
            item.dirty = False
        if not keep:
            self.discard(item)
        else:  # readable through open handles; nothing to recover after a crash
            item.drop_record()

    def discard(self, item: StagedFile) -> None:
        """Remove an item's files."""
        with self._lock:
            if self._items.get(item.key) is item:
                del self._items[item.key]
        item.close_fd()
        _remove(item.data_path)
        item.drop_record()

    def shrank(self, nbytes: int) -> None:
        """Bytes were freed from a file still in the cache (released ranges)."""
        with self._lock:
            self._estimate = max(0, self._estimate - nbytes)

    def grew(self, nbytes: int) -> None:
        """Bytes were fetched or written into the cache: evict once it may be over capacity."""
        with self._lock:
            self._estimate += nbytes
            due = self._estimate > self.capacity
        if due:
            self.evict()

    def needs_room(self, nbytes: int) -> bool:
        """True when ``nbytes`` more would take the cache past ``capacity``, even after evicting
        clean files (dirty data fills it: the caller may release some, see StagedFile.release)."""
        nbytes += JOURNAL_ROOM  # the records written meanwhile: counted in usage(), not estimated
        with self._lock:
            due = self._estimate + nbytes > self.capacity
        if not due:
            return False
        self.evict(need=nbytes)
        with self._lock:
            return self._estimate + nbytes > self.capacity

    def over_capacity(self) -> bool:
        """True when even after eviction the cache holds more than ``capacity`` (dirty data)."""
        with self._lock:
            due = self._estimate > self.capacity
        if due:
            self.evict()
            with self._lock:
                return self._estimate > self.capacity
        return False

    def _maybe_evict(self) -> None:
        with self._lock:
            due = self._estimate > self.capacity
        if due:
            self.evict()

    def usage(self) -> int:
        """Bytes the cache takes on disk: its files' blocks and the journal's."""
        try:
            journal = os.stat(self.journal.path).st_blocks * 512
        except OSError:
            journal = 0
        return journal + sum(i.local_bytes() for i in self.items())

    def evict(self, need: int = 0) -> None:
        """Drop clean, closed items, least recently used first, until under capacity."""
        total = self.usage()
        freed, _ = self._evict_while(lambda freed, _: total - freed + need > self.capacity, "")
        with self._lock:
            self._estimate = total - freed

    def _evict_while(self, more: Callable[[int, int], bool], why: str) -> tuple[int, int]:
        """Drop clean, closed items, least recently used first, while ``more(bytes freed, items
        dropped)``; returns those two."""
        freed = evicted = 0
        for item in self._evictable():
            if not more(freed, evicted):
                break
            size = item.local_bytes()
            if not self._take_evictable(item):
                continue
            log.debug("evicting %s from the cache%s", item.key, why)
            self.discard(item)
            freed += size
            evicted += 1
        return freed, evicted

    def _evictable(self) -> list[StagedFile]:
        """Items eviction may drop, least recently used first: clean, closed, not uploading."""
        with self._lock:
            return sorted((i for i in self._items.values() if self._may_evict(i)), key=lambda i: i.last_used)

    @staticmethod
    def _may_evict(item: StagedFile) -> bool:
        """The one rule of eviction (caller holds ``_lock``): never an open, dirty or uploading item."""
        return item.open_count <= 0 and not item.dirty and not item.uploading

    def _take_evictable(self, item: StagedFile) -> bool:
        """Take ``item`` out of the table if it may still be evicted (it may have been opened, written
        or evicted by another thread since :meth:`_evictable` listed it); the caller discards it."""
        with self._lock:
            if self._items.get(item.key) is not item or not self._may_evict(item):
                return False
            del self._items[item.key]
            return True

    def when_full(self, attempt: Callable[[], T], need: int, what: str) -> T:
        """``attempt()``; when the cache's disk is full (:func:`disk_full`), clean files are
        evicted (:meth:`free_disk`) and it is tried once more, so a disk smaller than
        ``capacity`` fills with clean copies without refusing writes. ``attempt`` must change
        nothing when it fails, or only what trying again redoes.

        :raises OSError: ENOSPC (or EDQUOT) when nothing could be freed, or the second try failed.
        """
        try:
            return attempt()
        except OSError as exc:
            if not disk_full(exc):
                raise
            if not self.free_disk(need, what):
                self._say_full(what)
                raise
        try:
            return attempt()
        except OSError as exc:
            if disk_full(exc):
                self._say_full(what)
            raise

    def free_disk(self, need: int, what: str) -> bool:
        """The cache's disk refused ``what`` (``need`` bytes): evict clean, closed items, least
        recently used first (as :meth:`evict`), until the disk has ``need`` bytes and the
        journal's room free. True if any were evicted.
        """
        want = need + JOURNAL_ROOM
        freed, evicted = self._evict_while(
            lambda _, evicted: not evicted or disk_room(self.root) < want, ": its disk is full"
        )
        if evicted:
            with self._lock:
                self._estimate = max(0, self._estimate - freed)
            log.info(
                "the cache's disk was full (%s): evicted %d clean files (%s) to make room",
                what,
                evicted,
                human_size(freed),
            )
            return True
        return False

    def _say_full(self, what: str) -> None:
        """The one line that says why ``what`` gets ENOSPC: the cache's disk is full of what cannot go."""
        with self._lock:
            dirty = [i for i in self._items.values() if i.dirty or i.uploading]
            writing = sum(1 for i in dirty if i.open_count > 0)
            reading = sum(1 for i in self._items.values() if i.open_count > 0) - writing
        # Three kinds apart: before round 37 a file open for writing counted both as waiting to
        # upload and as open ("1 dirty files wait to upload, 1 files are open": one file).
        log.error(
            "%s: no space left on the cache's disk (%s: %s free, cache_size %s): no clean, closed file "
            "left to evict: %d files not yet in S3 (%s: %d closed, waiting to upload; %d still open), "
            "%d files in S3 held open",
            what,
            self.root,
            human_size(disk_room(self.root)),
            human_size(self.cache_size),
            len(dirty),
            human_size(sum(i.local_bytes() for i in dirty)),
            len(dirty) - writing,
            writing,
            reading,
        )

    def recover(self) -> list[StagedFile]:
        """Items a previous run left dirty (after a crash or a failed upload).

        Data files without a record were clean copies: they are removed.
        """
        names = os.listdir(self.root)
        remove_left(self.root, names)
        recorded = dict(self._recorded)
        self._recorded = {}
        legacy = self._legacy_sidecars(names)
        recorded.update(legacy)
        unreadable = {n[:-5] for n in names if n.endswith(".json")} - legacy.keys()  # left as they are
        for name in names:
            if name.endswith(".data") and name[:-5] not in recorded and name[:-5] not in unreadable:
                _remove(os.path.join(self.root, name))
        found = []
        for item_id, state in sorted(recorded.items()):
            record = StagedRecord.from_json(state)
            if record.bucket != self.bucket or not record.key.startswith(self.prefix):
                continue  # not ours to judge: its record stays
            key = record.key[len(self.prefix) :]
            data = os.path.join(self.root, item_id + ".data")
            if not record.dirty or not os.path.exists(data):
                self.orphan_uploads += [(key, u) for u in record.upload_ids]
                _remove(data)
                self.journal.record(item_id, None)
                continue
            item = StagedFile(self, item_id, key)
            item.restore(record)
            bad = item.damaged_ranges()
            if bad:  # changed on the local disk since an upload read it: never send it as ours
                item.close_fd()
                log.error(
                    "recovery of %s: its staged copy %s changed on disk since it was written (bytes %s "
                    "differ from the digests recorded): not uploaded; kept for you to inspect",
                    item.key,
                    item.data_path,
                    ", ".join("%d-%d" % (o, o + n - 1) for o, n in bad),
                )
                self.damaged.append(item.key)
                self.orphan_uploads += [(item.key, u) for u in item.upload_ids]
                continue
            with self._lock:
                self._items[item.key] = item
            found.append(item)
        self._spares.allow()  # only now: the listing above removed the spares a killed run left
        return found

    def _legacy_sidecars(self, names: list[str]) -> dict[str, dict[str, object]]:
        """Records an earlier version kept in ``<id>.json`` files (of ``names``), moved into the journal."""
        found = {}
        for name in sorted(names):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.root, name)
            try:
                with open(path) as f:
                    state = json.load(f)
            except (OSError, ValueError) as exc:
                log.warning("unreadable sidecar %s (%s): left as it is", path, exc)
                continue
            self.journal.record(name[:-5], state, durable=True)
            _remove(path)
            found[name[:-5]] = state
        return found


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
