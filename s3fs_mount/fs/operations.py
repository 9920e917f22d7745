"""The fusepy adapter: each FUSE call, in a few lines, over the units below it.

Every method runs inside :func:`fuse_operation`, which turns any failure
into an honest errno and one log line (see :mod:`.errors`).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs import filecalls
from s3fs_mount.fs.dirtimes import DirTimesWriter
from s3fs_mount.fs.errors import Conflict, FsError, Removed, Replaced, Stale, Superseded
from s3fs_mount.fs.fuselib import (
    LIBFUSE_MAJOR,
    KernelNames,
    Operations,
    TypeOnly,
    Unsettled,
    fuse_entries,
    fuse_get_context,
    fuse_operation,
)
from s3fs_mount.fs.holders import PendingHolders
from s3fs_mount.fs.kernel_readahead import KERNEL_DEFAULT_READAHEAD, KernelReadahead
from s3fs_mount.fs.kernel_sizes import KernelSizes
from s3fs_mount.fs.known import KnownVersions
from s3fs_mount.fs.mutations import Change, Mutations, staged_attributes
from s3fs_mount.fs.namespace import Namespace
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.fs.paths import KeyMap
from s3fs_mount.fs.prefetch import Prefetcher, ReadState, Span, joined
from s3fs_mount.fs.staging import ItemView, ReleasedRange, StagedFile, StagingCache, disk_full
from s3fs_mount.fs.status import STATUS_XATTR, fitting
from s3fs_mount.fs.upload import WRITE_GATE, Uploader, WritebackQueue, hold_at_write_gate

if TYPE_CHECKING:  # handed on to the units below, never asked anything here
    from s3fs_mount.s3.bucket import Bucket

log = logging.getLogger(__name__)

#: Entries of a directory's first readdir reply, before any stat could start the stat-ahead:
#: 16 stats in name order have it 32 HEADs ahead (its window doubles from 2). A full reply holds
#: ~200 entries (a 32 KiB getdents), each of which ls -l then stats with a FUSE call of its own.
FIRST_READDIR_REPLY = 16

XATTR_CREATE, XATTR_REPLACE = 1, 2
SYMLINK_MODE = stat.S_IFLNK | 0o777
HIDDEN_PREFIX = ".fuse_hidden"
#: .fuse_hidden names libfuse has unlinked that are remembered (see S3Operations._forget_hidden).
GONE_HIDDEN_KEPT = 1024
#: Of those, the last this many small files (at most GONE_KEPT_BYTES) stay openable.
GONE_FILES_KEPT = 16
GONE_KEPT_BYTES = 1 << 20
MAX_FUSE_THREADS = 16  # libfuse3 worker threads, all kept when idle (its default logs a complaint)
#: Seconds past the kernel's entry timeout before a large directory's names are forgotten (KernelNames).
KERNEL_NAMES_GRACE = 0.5
BACKPRESSURE_WAIT = 60.0  # seconds a write waits for uploads before it goes on anyway
RETRY_WORKERS = 2  # without -o writeback: threads that try again the uploads of closes that failed
ZEROS_A_WRITE = 1 << 20  # bytes of zeros a punched hole writes at a time
#: The largest file an open for reading and writing fetches to keep the kernel's pages of it
#: (see S3Operations._kept_bytes_local); a larger one's pages are dropped.
OPEN_FETCH_MAX = 8 << 20


#: How many versions another client puts while a write follows them (each one landing between
#: the lookup and the fetch) the write follows before it says EIO (a log appended to by two
#: mounts at once moved on again within 3 ms now and then).
FOLLOW_TRIES = 3
#: The same for a write through an O_APPEND handle: two mounts appending to one log at once put
#: a version every few ms, and 3 tries said EIO to 4 appends of 200 (round 37); its bytes go at
#: the end of whatever version its upload meets anyway (fs/upload.py).
APPEND_FOLLOW_TRIES = 12


@dataclass(frozen=True)
class Pin:
    """The version a handle has read bytes of: the item's count of other clients' versions
    followed then (:attr:`StagedFile.followed`), its ETag and size, and the digest S3 told of
    it ('': not known). The item follows a newer version for new opens and stats; the handle
    goes on only while the item holds this one's bytes (:meth:`S3Operations._keep_version`).
    This mount's own uploads move it on with the item (their bytes are the handle's)."""

    followed: int
    etag: str
    size: int
    digest: str


@dataclass
class Handle:
    """One open file description. Immutable after open, but ``read_state`` (see ReadState),
    ``close_failed`` and ``accessed`` (unguarded: two first reads at once both apply relatime,
    harmlessly), ``served`` and ``pin`` (unguarded: set by its reads; two at once pin the same
    version)."""

    item: StagedFile
    path: str
    writable: bool
    append: bool = False  # O_APPEND: every write lands at the end, whatever offset the kernel gives
    read_state: ReadState = field(default_factory=ReadState)
    accessed: bool = False  # a read through it has moved the file's atime (or found it need not)
    served: bool = False  # a read through it has returned bytes (unguarded: only ever becomes True)
    #: Its open kept the pages the kernel holds of the file (checked bytes of this version:
    #: StagedFile.kernel_may_keep; or bytes written here: StagedFile.kernel_pages_written_here),
    #: so, opened for reading, it counts as having served bytes from the start.
    kept: bool = False
    #: Opened while another handle of the file may have read an older version's bytes: its
    #: reads and writes bypass the kernel's pages (``direct_io``; see ``_old_version_open``).
    direct: bool = False
    #: The version its reads have served bytes of (None: none yet); see :class:`Pin`.
    pin: Pin | None = None
    #: Opened for reading: the item's count of appends moved after another client's version
    #: then (StagedFile.moves); None: opened write-only (it had no bytes). See ``_keep_version``.
    moves_seen: int | None = None
    #: Its close (flush) could not upload the file (unguarded: only ever becomes True): its
    #: release has it tried again in the background.
    close_failed: bool = False
    #: Opened for reading: the item's count of other clients' versions followed then, and that
    #: version's size in S3, the size the kernel held (None: opened write-only). See
    #: ``_size_told_late``.
    opened_at: tuple[int, int] | None = None


class S3Operations(Operations):
    """A bucket (or a prefix of one) as a filesystem.

    ::

        >>> ops = S3Operations(Bucket(store, 'mybucket'), '', MountOptions())
        >>> FUSE(ops, '/mnt/s3', **ops.fuse_options())

    :param store: the bucket to mount: every request of the mount goes through it.
    :param prefix: the key prefix that is the mount's root ('' for all): fixed in the view
        (``store.under(prefix)``), so the keys above it are the mount's own.
    :param options: the ``-o`` settings.
    :param mountpoint: where we are mounted (for the kernel's readahead; None in tests).
    :param server_full: says why uploads fail when the server is full (else None): ENOSPC then.
    :param clock: what TTLs and new times are measured by (tests give a fake one).
    """

    # fusepy: times in nanoseconds; read/write/flush/release of an unlinked file get path None.
    use_ns = True
    flag_nullpath_ok = True
    # fuselib answers getxattr of these itself (ENOTSUP), as getxattr below would.
    unstored_xattr_prefixes = A.UNSTORED_PREFIXES

    def __init__(
        self,
        store: Bucket,
        prefix: str,
        options: MountOptions,
        mountpoint: str | None = None,
        server_full: Callable[[], str | None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        store = store.under(prefix)
        self.bucket, self.prefix = store.name, store.prefix
        self.clock = clock
        self.options = options
        self.keymap = KeyMap()
        self.defaults = A.Defaults(options.uid, options.gid, options.umask)
        self.staging = StagingCache(  # makes the cache directory (0700), locked to this mount
            os.path.join(options.cache_dir, _safe(store.name, store.prefix)),
            store.name,
            options.cache_size,
            clock=clock,
            prefix=store.prefix,
        )
        self.namespace = Namespace(
            store,
            self.keymap,
            self.defaults,
            options.attr_ttl,
            options.dir_ttl,
            clock=clock,
            attr_cache=options.attr_cache,
            listing_attrs=options.listing_attrs,
            known=KnownVersions(self.staging.root, self.defaults),
            holders=PendingHolders(self.staging.root),
            defer_holders=options.writeback,
        )
        #: Entries (besides . and ..) in the first readdir reply of a directory read anew (fuselib):
        #: a walk that stats each entry as it reads them (ls -l) has the stat-ahead's HEADs going
        #: after these, and the rest go out whole (_entries); each further reply is full. 0: no
        #: bound (listing_attrs: every file goes out with its listing's attributes anyway).
        self.first_readdir_reply = 0 if options.listing_attrs else FIRST_READDIR_REPLY
        self.prefetcher = Prefetcher(
            store,
            options.readahead,
            workers=options.parallel,
            on_fetched=self.staging.grew,
            part_layout_of=lambda key, etag, size, parts, every: self.namespace.part_layout_of(
                key, size, parts, every
            ),
            verify=options.checksum,
            checksum_of=lambda key, etag: self.namespace.expected_digest(key, etag),
            readahead=options.kernel_readahead or KERNEL_DEFAULT_READAHEAD,
        )
        self.uploader = Uploader(
            store,
            options.part_size,
            options.multipart_threshold,
            options.upload_parallel,
            self.staging,
            part_doubling=options.part_doubling,
            memory=options.upload_memory,
            refill=lambda item: self.prefetcher.ensure(item, 0, item.size),
            on_stored=lambda item: self.changes.remember_uploaded(item),
            digest_of=lambda key, etag: self.namespace.known_digest(self.namespace.keymap.path(key), etag),
            fetch_version=self.prefetcher.fetch_version,
        )
        #: Every change of names and metadata; ``server_full`` says why uploads fail when the server
        #: is out of space (the embedded server reads its log): such a failure is ENOSPC, not EIO.
        self.changes = Mutations(
            store, self.namespace, self.staging, self.uploader, self.prefetcher, server_full, clock
        )
        self.changes.exclusive_mkdir = options.exclusive_mkdir
        #: Where requests go and how they fared, for ``s3fs-mount status`` (no request is sent here).
        self.endpoint, self.request_summary = store.endpoint, store.request_summary
        self._lock = threading.Lock()  # guards _handles, _hidden, _gone, _gone_files, background
        #: The background uploads: with ``-o writeback`` every close's (``writeback``, made
        #: here); without, only the retries of closes that failed, made at the first such close.
        self.background: WritebackQueue | None = None  # GUARDED_BY(_lock): set once
        self.writeback = self._background_uploads() if options.writeback else None
        self._handles: dict[int, Handle] = {}  # GUARDED_BY(_lock)
        #: .fuse_hidden path -> the unlinked file its handles still use; each holds one open of
        #: its file until libfuse unlinks the name (see _hide)
        self._hidden: dict[str, StagedFile] = {}  # GUARDED_BY(_lock)
        #: .fuse_hidden paths libfuse has unlinked, oldest first (the values unused): a call by
        #: such a name is ESTALE, not ENOENT (see _forget_hidden)
        self._gone: OrderedDict[str, None] = OrderedDict()  # GUARDED_BY(_lock)
        #: The last GONE_FILES_KEPT of those whose small file stays openable by it, oldest first:
        #: each holds one open of its file (see _forget_hidden)
        self._gone_files: OrderedDict[str, StagedFile] = OrderedDict()  # GUARDED_BY(_lock)
        #: The size the kernel holds of each file, as our replies told it: an open of a version
        #: of another size is ESTALE, so that the kernel learns the size before it reads (see open)
        self.kernel_sizes = KernelSizes(options.attr_ttl, options.attr_cache, clock.time)
        self.kernel_readahead = KernelReadahead(mountpoint, options.kernel_readahead) if mountpoint else None
        #: Names of large directories the kernel is told to forget once it would ask again anyway
        #: (libfuse keeps a node per name the kernel holds): libfuse3 only, which can tell it. It
        #: holds at most about as many as we keep attributes (attr_cache): readdir slows past that.
        self.kernel_names = (
            KernelNames(options.attr_ttl + KERNEL_NAMES_GRACE, hold=options.attr_cache)
            if mountpoint and LIBFUSE_MAJOR == 3
            else None
        )
        self.unuploaded: list[str] | None = None  # set by destroy()
        self.dir_times: DirTimesWriter | None = None  # set by start()
        self._next_fh = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------

    def fuse_options(self) -> dict[str, object]:
        """The FUSE options, chosen by measurement (bench/README.md)."""
        opts: dict[str, object] = {
            "foreground": True,
            "nothreads": not self.options.threads,
            "fsname": "s3fs-mount:%s" % self.bucket,
            "subtype": "s3fs-mount",
            "attr_timeout": self.options.attr_ttl,
            "entry_timeout": self.options.attr_ttl,
            "negative_timeout": 0,
            "use_ino": False,
            # Unlink of an open file: libfuse renames it to .fuse_hiddenXXXX (see _hide), so that
            # fstat, fchmod and futimens through its handles still have a name to go by. The
            # kernel sends those by node, without the handle, and with hard_remove libfuse finds
            # no path for an unlinked node: ESTALE (libfuse3), ENOENT (libfuse2), measured.
            "hard_remove": False,
        }
        if LIBFUSE_MAJOR == 2:
            # libfuse3 negotiates 1 MiB requests by itself; libfuse2 needs asking (and caps at 128 KiB).
            opts.update(big_writes=True, max_write=1 << 20, max_read=1 << 20, max_readahead=1 << 20)
            if self.options.nonempty:
                opts["nonempty"] = True  # libfuse3 has no such check (the CLI checks instead)
        else:
            opts.update(max_threads=MAX_FUSE_THREADS, max_idle_threads=MAX_FUSE_THREADS)
        if self.options.ro:
            opts["ro"] = True
        if self.options.allow_other:
            opts["allow_other"] = True
            opts["default_permissions"] = True
        return opts

    def start(self) -> list[str]:
        """At mount: learn how this server guards uploads, then recover; returns the keys still pending."""
        if not self.options.ro:
            # The probe writes at the bucket's top: a refusal there says nothing of a prefix (keys
            # may write there only), but of a whole-bucket mount it says every write is refused.
            whole = not self.prefix
            refused = self.uploader.configure_checks(self.options.conflict_check, say_refusal=not whole)
            if refused is not None and whole:
                log.warning(
                    "S3 refused this mount a write to %s (%s): with these keys every change will fail "
                    "with EACCES and what is written stays staged (-o ro mounts read-only)",
                    self.bucket, refused,
                )
                self.changes.new_dirs.expect_refusals()  # mkdir says EACCES itself, not a later fsync
            probe = refused is None or not whole
            if probe and self.options.checksum:
                self.uploader.configure_checksums()
            if probe:
                self.namespace.configure_directories()
                self.namespace.configure_names()
            self.changes.note_recovered("directory holders to write", self.namespace.recover_holders())
            if probe:
                self.changes.configure_renames(self.options.server_rename)
            self.dir_times = DirTimesWriter(self.namespace)
            self.dir_times.start()
        self.namespace.load_root()
        return self.recover()

    def recover(self) -> list[str]:
        """Upload what a previous run left staged; returns the keys still pending. Those that
        could not be (S3 away, or refusing) are tried again in the background, the whole of
        recovery's step each (:meth:`Mutations.recover_file`): before round 38 they waited for
        a sync, a write to them or the unmount."""
        return self.changes.recover(
            retry=lambda item: self._background_uploads().retry_later(item, self.changes.recover_file)
        )

    def destroy(self, path: str) -> None:
        """Unmount: upload everything still dirty (``unuploaded`` says what could not be)."""
        self.unuploaded = self.finish()

    def finish(self) -> list[str]:
        """Upload every dirty file; returns the keys that stay staged."""
        queue = self.writeback
        if queue is None:
            self.stop_background()  # the retries of failed closes: each file is tried here once more
            left = self._upload_one_by_one()
        else:
            left = self._upload_in_background(queue)
        self.changes.close()  # pending deletes: sent, or recorded (and logged) for the next mount
        if self.dir_times is not None:
            self.dir_times.close()
        elif not self.options.ro:
            self.namespace.store_dir_times()
        self.namespace.holders.close()  # after the times: the holders are written with them
        self.namespace.close()  # last: writing times and holders looks their directories up
        return left

    def _upload_one_by_one(self) -> list[str]:
        """Upload every dirty file in turn; returns the keys that stay staged."""
        left = []
        pending = self.staging.pending()
        for n, item in enumerate(pending, 1):
            log.info("unmount: uploading %s (%d of %d, %d bytes)", item.key, n, len(pending), item.size)
            try:
                self.uploader.flush(item)
            except Conflict as exc:  # ours is in S3 under the conflict name (the uploader logged it)
                self.changes.conflicted(exc)
            except Exception as exc:
                log.error("could not upload %s at unmount (%s); it stays staged", item.key, exc)
                left.append(item.key)
        return left

    def _upload_in_background(self, queue: WritebackQueue) -> list[str]:
        """``-o writeback``: wait for the queue, then give it what is still dirty (closed files
        whose release never came: an unmount drops those still queued in the kernel; uploads
        that failed), one more try each, on its threads; returns the keys that stay staged
        (each failure logged by the queue)."""
        self._drain(queue)
        unqueued = self.staging.pending()
        if unqueued:
            log.info("unmount: %d files not yet uploaded join the background uploads", len(unqueued))
            for item in unqueued:
                queue.submit(item)
            self._drain(queue)
        return [item.key for item in self.staging.pending()]

    def _drain(self, queue: WritebackQueue) -> None:
        """Wait for the background uploads, saying how many are left."""
        while not queue.drain(timeout=2.0):
            log.info("unmount: waiting for %d background uploads", len(self.staging.pending()))

    def _background_uploads(self) -> WritebackQueue:
        """The background upload queue, made (and its threads started) at the first use."""
        with self._lock:
            if self.background is None:
                self.background = WritebackQueue(
                    self.uploader,
                    workers=self.options.parallel if self.options.writeback else RETRY_WORKERS,
                    on_uploaded=self.changes.uploaded_in_background,
                    on_conflict=self.changes.conflicted,
                )
            return self.background

    def stop_background(self) -> None:
        """Stop the background uploads (unmount, after :meth:`finish`)."""
        with self._lock:
            queue = self.background
        if queue is not None:
            queue.stop()

    # -- helpers --------------------------------------------------------------------

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def _writable(self) -> None:
        if self.options.ro:
            raise FsError(errno.EROFS)

    def _attributes(self, path: str) -> A.Attributes:
        """Attributes of ``path``, with a staged copy's size and times over S3's."""
        if _is_hidden(path):
            return self._item_attributes(self._hidden_item(path))
        item = self.staging.get(self.keymap.key(path)) if path != "/" else None
        if item is not None and _live(item):
            return self._item_attributes(item)
        return self.namespace.lookup(path)

    def _shown(self, path: str) -> A.Attributes:
        """What a ``stat`` by name shows: :meth:`_attributes`, but of a file open here that
        nobody writes here (clean, not uploading), the version S3 holds, as an open would find
        it (after attr_ttl, one HEAD): the item follows it, for new opens and stats, while each
        handle that has read bytes of the old one stays in that one (:meth:`_keep_version`).
        Its open copy alone showed the version held since the first open for as long as any
        process had it open (``tail -f``), and the kernel, told that size, cut a ``cat`` of the
        new version to it (round 36). Linux sends an ``fstat`` so too: it shows the file as it
        is now, as on a local disk."""
        item = None if _is_hidden(path) or path == "/" else self.staging.get(self.keymap.key(path))
        if item is None or item.dirty or item.uploading or item.open_count == 0:
            return self._attributes(path)
        try:
            a = self.namespace.lookup_full(path)
        except FsError:  # gone from S3, or removed here: the open copy is what there is
            return self._item_attributes(item)
        if not a.is_dir:  # (a directory shadowing it: the open's ESTALE says so, not a stat)
            item.adopt(a.size, a.etag, a.metadata, a.headers, a.mtime, a.seen_at)
        return self._item_attributes(item)

    def _known_attributes(self, path: str) -> A.Attributes | None:
        """What this mount knows of ``path`` (a staged copy, or cached attributes), with no request."""
        item = self.staging.get(self.keymap.key(path))
        if item is not None and _live(item):
            return self._item_attributes(item)
        return self.namespace.cached(path)

    def _item_attributes(self, item: StagedFile) -> A.Attributes:
        return staged_attributes(item, self.defaults)

    def _tune_readahead(self) -> None:
        """On the first open: the kernel sets a file's readahead up after our open answers."""
        if self.kernel_readahead is not None:
            self.kernel_readahead.ensure()

    def _hidden_item(self, path: str, opening: bool = False) -> StagedFile:
        """The unlinked file libfuse calls ``path`` (a .fuse_hidden name), still open or kept
        openable (:meth:`_forget_hidden`). Else ESTALE
        (:class:`Superseded`) for a name libfuse has unlinked since (:meth:`_forget_hidden`), and
        for any an open comes by; ENOENT for the rest (what libfuse looks for in a new such name)."""
        with self._lock:
            item = self._hidden.get(path) or self._gone_files.get(path)
            gone = path in self._gone
        if item is None:
            raise Superseded(path) if gone or opening else FsError(errno.ENOENT)
        return item

    def _open_hidden(self, path: str, writable: bool, flags: int) -> int:
        """An open of a file unlinked, or replaced by a rename, while open: the kernel had looked
        its name up just before, and libfuse calls it by its .fuse_hidden name now. It opens, as
        on a local disk (readers of a file another process replaced by ``os.replace`` got ENOENT
        in the moment between libfuse's two renames).

        A name no longer known is ESTALE, not ENOENT: the kernel then walks the path again
        (LOOKUP_REVAL) and opens what the name holds now, the file that replaced this one (an
        open it sends by such a name comes from a node it looked up before: none other has it)."""
        item = self._hidden_item(path, opening=True)
        if not self.staging.reopen(item):
            raise Superseded(path)
        try:
            if writable and flags & os.O_TRUNC:
                self._truncate_item(item, 0)
        except BaseException:
            self.staging.release(item)
            raise
        return self._new_handle(item, path, writable, bool(writable and flags & os.O_APPEND))

    def _hide(self, path: str, hidden: str) -> None:
        """libfuse's unlink of an open file: gone from S3 and from listings, alive through its
        handles and, for an open through its hidden name (:meth:`_open_hidden`), until libfuse
        unlinks that name (after its last close): the name counts as one more open."""
        # Counted before the removal: the last handle may be closing at this moment (libfuse
        # counts it open until that close returns), and an unlinked file with none goes away.
        held = self.staging.get(self.keymap.key(path))
        if held is not None and not self.staging.reopen(held):
            held = None
        item = self.changes.remove_file(path)
        self.kernel_sizes.moved(path, hidden)
        if held is not None and item is held:
            with self._lock:
                self._hidden[hidden] = item
        elif held is not None:
            self.staging.release(held)

    def _parent_dir(self, path: str) -> None:
        """``path``'s parent is a directory (else ENOTDIR), and a new name may be ``path`` (else
        EINVAL: :meth:`KeyMap.check_new`; ENAMETOOLONG: :meth:`Mutations.check_keys_fit`)."""
        self.keymap.check_new(path)
        self.changes.check_keys_fit([self.keymap.key(path)])
        parent = KeyMap.split(path)[0]
        if not self._attributes(parent).is_dir:
            raise FsError(errno.ENOTDIR)

    def _whole(self, item: StagedFile, h: Handle | None = None) -> None:
        """Before the first write to an object's copy, fetch all of it (crash safety).

        A version of the same bytes under a new ETag is followed by the fetch itself
        (:meth:`Mutations.fetch_whole`). Through handle ``h`` that has served nothing yet, any
        version another client put since the lookup the open used (within attr_ttl) is followed
        too, as :meth:`_read_spans` does: the write lands on the bytes S3 holds, as after an open
        a moment later (it was EIO)."""
        tries = APPEND_FOLLOW_TRIES if h is not None and h.append else FOLLOW_TRIES
        for attempt in range(1, tries + 1):
            try:
                self.changes.fetch_whole(item)
                return
            except Replaced:
                if h is None or h.served or h.path is None or attempt == tries:
                    raise
                self.changes.follow_replaced(h.path, item)

    def _new_handle(
        self,
        item: StagedFile,
        path: str,
        writable: bool,
        append: bool = False,
        kept: bool = False,
        readable: bool = True,
        direct: bool = False,
    ) -> int:
        """A handle of ``item``; one opened for reading whose open ``kept`` the kernel's pages
        may have read them (the kernel serves them unasked): it counts as having served bytes.
        One opened write-only has served nothing, whatever the kernel keeps. A ``direct`` one's
        reads and writes bypass the kernel's pages."""
        fh = next(self._next_fh)
        served = kept and readable
        view = item.view()
        pin = self._pin(item, path, view) if served else None
        state = ReadState()
        if direct:  # its reads fill no page of the kernel's: never the reader that checked them
            state.only_streamed = False
        with self._lock:
            self._handles[fh] = Handle(
                item, path, writable, append, read_state=state, served=served, kept=kept, direct=direct,
                pin=pin,
                moves_seen=item.moves if readable else None,
                opened_at=(view.followed, view.remote_size) if readable else None,
            )
        return fh

    def _pin(self, item: StagedFile, path: str | None, view: ItemView) -> Pin:
        """The version ``view`` shows ``item`` at, as a handle that serves bytes of it pins it."""
        digest = self.namespace.known_digest(path, view.etag) if path and view.etag else ""
        return Pin(view.followed, view.etag, view.remote_size, digest)

    def _keep_version(self, h: Handle, at_end: bool = False) -> None:
        """Reads, writes and truncates through a handle stay in the bytes it may have had: EIO,
        now and for every later read through it (``read_state.failed``), once they are no
        longer the file's. Two things take them away:

        * Our appends went after another client's version (:meth:`StagedFile.rebase_appends`)
          since it was opened for reading: it may have had the bytes now moved, from us or
          unasked from the kernel's pages this mount's writes filled, whatever it read through
          us (its reads were theirs cut where its last one ended; its writes went over theirs).
          Never forgiven; an open after it reads the file as it is (the open has the kernel drop
          the old pages). Not for a write ``at_end`` (O_APPEND): it lands there whatever it read.
        * The item followed another client's version (an open, a stat, another handle's read
          found it) since it served bytes of one (:class:`Pin`): unless the new version holds
          the old one's bytes, the same or them and more (an append: ``tail -f`` of a log
          another client puts anew, longer): then the handle goes on in it. The kernel's
          pages it read are that version's either way."""
        if not at_end:
            self._not_moved(h)
        pin = h.pin
        if pin is None:
            return
        if h.read_state.failed:
            raise FsError(errno.EIO, "%s: an earlier read through this handle failed" % h.path)
        if h.item.followed == pin.followed:  # (read unlocked: one int; the read checks again after)
            return
        view = h.item.view()
        if not self.changes.holds_bytes_of(h.path, h.item, pin.size, pin.digest):
            h.read_state.failed = True  # every later read is EIO too (the reader has old bytes)
            log.warning("%s: another client's version %s (%d bytes) replaced the one this handle read "
                        "(%d bytes, %s): other bytes, or none tell: EIO", h.path, view.etag,
                        view.remote_size, pin.size, pin.digest or "digest not known")
            raise FsError(errno.EIO)
        moved = self._pin(h.item, h.path, view)
        with h.item.pages_lock:
            h.item.pages_carry(pin.followed, view.followed)
            h.pin = moved
        self.prefetcher.drop(h.read_state)  # its pieces (and their check) were of the old version

    def keeps_kernel_pages(self, fh: int) -> bool:
        """Did the open that made handle ``fh`` find the kernel's pages of the file to be checked
        bytes of its version (the binding then sets ``keep_cache``; else the kernel drops them)?"""
        h = self._handles.get(fh)
        return h is not None and h.kept

    def bypasses_kernel_pages(self, fh: int) -> bool:
        """Must handle ``fh``'s reads and writes bypass the kernel's pages of the file (the
        binding then sets ``direct_io``)? See :meth:`_old_version_open`."""
        h = self._handles.get(fh)
        return h is not None and h.direct

    # -- attributes and directories ---------------------------------------------------

    @fuse_operation
    def getattr(self, path: str, fh: int | None = None) -> dict[str, object]:
        h = self._handles.get(fh) if fh is not None else None
        if h is not None:  # the kernel's own look at an open file: its copy (maybe unlinked, or renamed)
            found = self._item_attributes(h.item).stat()
        else:
            found = self._shown(path).stat()
        if stat.S_ISREG(found["st_mode"]) and path:  # type: ignore[arg-type]
            self.kernel_sizes.told(path, found["st_size"])  # type: ignore[arg-type]
        if h is not None:
            return found
        if self.kernel_names is not None and path != "/":
            parent, name = KeyMap.split(path)
            if self.namespace.walked(parent):
                self.kernel_names.forget_later(parent, name)
        return found

    def opendir(self, path: str) -> int:
        return next(self._next_fh)  # distinct per open directory: fuselib keeps its listing by it

    @fuse_operation
    def readdir(self, path: str, fh: int) -> Iterator[str | tuple[str, dict[str, object] | None, int]]:
        """Names with their attributes (on libfuse3 they fill the kernel's cache: readdirplus),
        handed out as the listing arrives: the first before the last page is fetched."""
        own = self._attributes(path)
        if not own.is_dir:
            raise FsError(errno.ENOTDIR)
        return fuse_entries("readdir", path, self._entries(path, sticky=bool(own.mode & stat.S_ISVTX)))

    def _entries(
        self, path: str, sticky: bool = False
    ) -> Iterator[str | tuple[str, dict[str, object] | None, int]]:
        prefix = self.keymap.dir_prefix(path)
        staged = {}  # written here, maybe not yet in S3: what they are here wins
        for item in self.staging.under(prefix):
            rest = item.key[len(prefix) :]
            if rest and "/" not in rest and _live(item):
                staged[rest] = item
        yield "."
        yield ".."
        # What a listing does not show (a directory's mode and owner, on its holder; a file's
        # mode, owner and type, in its metadata) the kernel asks for (a getattr) rather than be
        # told the defaults; it is told the type where that is certain (d_type: find need not ask),
        # and a file of certain type is its dentry too, its attributes not to be kept (Unsettled:
        # rm -rf unlinks it with no lookup, so no HEAD). Not in a sticky directory: the kernel
        # checks who may unlink there by the owner its inode holds, which it does not ask again.
        names = self.kernel_names
        trusted = self.namespace.listing_attrs
        for n, (name, a) in enumerate(self.namespace.iter_dir(path)):
            item = staged.pop(name, None)
            if item is not None:
                a = self._item_attributes(item)
            elif not (a.complete or a.is_dir or trusted):
                # A walk that stats as it reads (ls -l) has this file's HEAD sent ahead already.
                a = self.namespace.fetched_ahead(KeyMap.join(path, name)) or a
            if names is not None and n == self.namespace.listed_names:  # a large directory
                names.large(path)
            if a.complete or (trusted and not a.is_dir):
                found = a.stat()
                if not a.is_dir:
                    self.kernel_sizes.told(KeyMap.join(path, name), a.size)
                yield name, found, 0
            else:
                kind = A.certain_type(a)
                if kind == stat.S_IFREG and not sticky:
                    yield name, Unsettled(a.stat()), 0
                else:
                    yield name, None if kind is None else TypeOnly(st_mode=kind), 0
        for name, item in sorted(staged.items()):
            a = self._item_attributes(item)
            self.kernel_sizes.told(KeyMap.join(path, name), a.size)
            yield name, a.stat(), 0

    @fuse_operation
    def mkdir(self, path: str, mode: int) -> None:
        self._writable()
        self._parent_dir(path)
        # Its marker and holder are longer keys than a file's: each must fit too.
        self.changes.check_keys_fit([self.keymap.marker_key(path)], holder=self.keymap.folder_key(path))
        try:
            self._attributes(path)
            raise FsError(errno.EEXIST)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        uid, gid, _ = fuse_get_context()
        self.changes.mkdir(path, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)

    @fuse_operation
    def rmdir(self, path: str) -> None:
        self._writable()
        if path == "/":
            raise FsError(errno.EBUSY)
        if not self._attributes(path).is_dir:
            raise FsError(errno.ENOTDIR)
        self.changes.rmdir(path)  # ENOTEMPTY

    @fuse_operation
    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        """The directory's removals (its pending deletes sent), and the directories made in it
        or under it (fs/newdirs.py), are in S3 when this returns."""
        if not self.options.ro:
            self.changes.sync_dir(path)

    @fuse_operation
    def statfs(self, path: str) -> dict[str, int]:
        # S3 has no capacity to report: large constants (1 PiB), as s3fs-fuse does.
        blocks = 1 << 38
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 32,
            "f_ffree": 1 << 32,
            "f_favail": 1 << 32,
            "f_namemax": 255,
        }

    # -- files ------------------------------------------------------------------------

    @fuse_operation
    def create(self, path: str, mode: int, fi: object = None) -> int:
        self._tune_readahead()
        self._writable()
        self._parent_dir(path)
        uid, gid, _ = fuse_get_context()
        item = self.changes.create(path, stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
        return self._new_handle(item, path, True)

    @fuse_operation
    def open(self, path: str, flags: int) -> int:
        self._tune_readahead()
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            self._writable()
        if _is_hidden(path):
            return self._open_hidden(path, writable, flags)
        key = self.keymap.key(path)
        staged = self.staging.get(key)
        if staged is not None and (staged.dirty or staged.uploading):
            attributes = None
        else:
            attributes = self._to_open(path, writable)
        a = attributes
        setup = None if a is None else lambda new: new.reset(a.size, a.etag, a.metadata, a.headers, a.mtime)
        item, created = self.staging.acquire(key, setup)
        try:
            if a is not None:
                if not created:  # close-to-open: follow another client's new version, never an older one
                    item.adopt(a.size, a.etag, a.metadata, a.headers, a.mtime, a.seen_at)
                item.saw_atime(a.atime)  # an atime a read moved (relatime), not yet stored
            if writable and flags & os.O_TRUNC:
                self._truncate_item(item, 0)
                self.kernel_sizes.told(path, 0)  # (the kernel sets its size to 0 itself: atomic_o_trunc)
            elif a is not None and flags & os.O_ACCMODE != os.O_WRONLY:  # (writes are not cut)
                self._size_told(path, item)
        except BaseException:
            self.staging.release(item)
            raise
        # A re-read of a file read whole and checked through this mount is served from the
        # kernel's pages: they are that version's bytes, checked (a new version is read anew).
        # So is one of a file written here: its pages are our own writes, and dropping them raced
        # with another handle's write on its way (not at an O_TRUNC open: the kernel's i_size
        # goes to 0 then, but not its pages, which a later write past them would bring back).
        kept = item.kernel_may_keep() or (
            not (writable and flags & os.O_TRUNC) and item.kernel_pages_written_here()
        )
        if kept and item.pages_of not in (None, item.followed):  # (read unlocked: an int)
            kept = False  # reads put another version's bytes in them (a write-only handle followed since)
        readable = flags & os.O_ACCMODE != os.O_WRONLY
        if kept and writable and readable:
            try:
                kept = self._kept_bytes_local(path, item)
            except BaseException:
                self.staging.release(item)
                raise
        with self._lock:
            others = [h for h in self._handles.values() if h.item is item]
        with item.pages_lock:  # (a read's pin and take of the pages are one step: before or after)
            direct = self._old_version_open(item, others)
            if direct:  # (the kernel's pages stay those of the old handle's version: not dropped here)
                kept = False
            elif not kept:
                item.pages_dropped()
        return self._new_handle(item, path, writable, bool(writable and flags & os.O_APPEND), kept, readable,
                                direct)

    def _old_version_open(self, item: StagedFile, handles: list[Handle]) -> bool:
        """Is a handle of ``item`` open that may have read bytes of a version it no longer is
        (pinned to an older one, or ours moved after theirs since it opened; see
        :meth:`_keep_version`)? The kernel keeps one set of pages per file, and serves every
        handle's reads from them unasked: a new open's reads would fill them with this version's
        bytes, and that handle would read them after its own (a file of neither version, no
        error: sqlite's "database disk image is malformed" on one mount, read while another
        wrote it). Such an open bypasses the pages (``direct_io``); the old handle's reads then
        come to us, and are EIO as the rule says. (Its own ``MAP_PRIVATE`` mmap still fills them.)
        ``handles`` are the item's open ones; under its ``pages_lock``."""
        followed, moves = item.followed, item.moves  # (read unlocked: ints)
        return any(
            h.read_state.failed or (h.pin is not None and h.pin.followed != followed)
            or (h.moves_seen is not None and h.moves_seen != moves)
            for h in handles
        )

    def _size_told(self, path: str, item: StagedFile) -> None:
        """An open of ``item`` by ``path`` goes on only if the kernel holds its size, or none
        still valid: else it would cut the reads at the size it holds (a longer version read cut,
        with no error: a ``cat`` on one mount during ``git checkout`` on another). Such an open
        follows a version the kernel has not been told of (our cached answer expired before
        the kernel's, or a read or stat of the file here followed another client's version): it
        is :class:`Stale` (ESTALE), and the kernel looks the name up again (LOOKUP_REVAL), learns
        the size, and opens again."""
        size = item.view().size
        held = self.kernel_sizes.differs(path, size)
        if held is not None:
            raise Stale(path, "the kernel holds %d bytes of a file now of %d: it must look it up again"
                        % (held, size))

    def _kept_bytes_local(self, path: str, item: StagedFile) -> bool:
        """May an open for reading and writing keep the kernel's pages of the file? Its reads
        come from those pages, the version's bytes, unasked, so its writes must land on them
        too (a write on another client's version that a process read ours before would replace
        theirs unseen; ours goes to a conflict copy at the close instead). Where the staged copy
        lacks them (a file read, not written, through this mount: its checked bytes were
        served, not staged), a file of up to :data:`OPEN_FETCH_MAX` bytes is fetched now, while
        S3 has that version (its first write found another's and said EIO); a larger one is
        not kept (the kernel drops the pages: the handle has served nothing, and reads fetch).
        Not kept either if S3 has another version already: then followed, as an open a moment
        later would."""
        view = item.view()
        if not (view.dirty or item.covers(0, view.remote_size)) and view.remote_size > OPEN_FETCH_MAX:
            return False
        try:
            self.changes.fetch_whole(item)
        except Replaced:
            self.changes.follow_replaced(path, item)
            return False
        return True

    def _to_open(self, path: str, writable: bool) -> A.Attributes:
        """The file an open of ``path`` opens: cached attributes will do for reading, but not
        for writing (S3 is asked: :meth:`Namespace.lookup_to_write`): a write to a file another
        client removed would end in a conflict copy, a ``touch`` of it in ENOENT, though the name
        is free.

        The kernel sends an open (never a create, even with O_CREAT) for a name it holds an entry
        of: a file gone from S3, or shadowed by a directory another client made, is :class:`Stale`
        (ESTALE), and the kernel looks the name up again (LOOKUP_REVAL) and finds it absent (an
        O_CREAT then creates it; without, the open is ENOENT) or a directory (EISDIR)."""
        try:
            if writable and self.namespace.cached(path) is not None:
                a = self.namespace.lookup_to_write(path)
            else:  # (not cached: this lookup asks S3)
                a = self.namespace.lookup_full(path)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            raise Stale(path, "removed from S3 by another client") from None
        if a.is_dir:
            raise Stale(path, "a directory shadows this file now")
        return a

    @fuse_operation
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return joined(self._read_spans(fh, size, offset))

    @fuse_operation
    def read_spans(self, path: str, size: int, offset: int, fh: int) -> list[Span]:
        """:meth:`read`'s bytes as spans of the blocks that hold them, which the FUSE binding
        copies straight into libfuse's buffer (:data:`~s3fs_mount.fs.prefetch.Span`)."""
        return self._read_spans(fh, size, offset)

    def _read_spans(self, fh: int, size: int, offset: int) -> list[Span]:
        h = self._handle(fh)
        if not h.accessed:
            h.accessed = True
            self._accessed(h)
        for _ in range(FOLLOW_TRIES):
            self._keep_version(h)
            spans, followed = self._fetch_spans(h, size, offset)
            if h.item.followed == followed:
                break
            # Another client's version was followed during this read: its bytes may be of both.
            if h.pin is not None:
                self._keep_version(h)  # EIO, or the new version holds them: the same bytes
                break
        else:
            raise FsError(errno.EIO, "%s: another client's versions kept landing during a read" % h.path)
        if not h.served and h.opened_at is not None and h.item.followed != h.opened_at[0]:
            self._size_told_late(h, h.opened_at[1])  # (this read, or another since the open, followed)
        pin = h.pin
        if pin is None or pin.etag != h.item.etag:  # its first bytes, or this mount's upload since
            view = h.item.view()
            # (Followed just now, after the read: pinned to a version nothing can be told of.)
            pin = self._pin(h.item, h.path, view) if view.followed == followed else Pin(followed, "", 0, "")
        with h.item.pages_lock:  # (an open's look at the pins, and drop of the pages: before or after)
            if not (h.direct or h.item.pages_take(followed)):
                self._pages_hold_another(h)
            h.pin = pin
        h.served = True
        self._not_moved(h)  # moved during this read: its bytes may be of both
        return spans

    def _pages_hold_another(self, h: Handle) -> None:
        """The bytes of a read through ``h`` (not ``direct_io``) would go into the kernel's pages
        of the file, which hold another version's bytes (:meth:`StagedFile.pages_take`: a handle
        opened before another client's version was followed, whose first read follows it, after
        another handle read the old one's bytes into the pages): EIO, now and for every later
        read through ``h``."""
        h.read_state.failed = True
        log.warning("%s: the kernel's pages of the file hold bytes of the version before another "
                    "client's, which this read would add to: EIO (opened again, it reads the new one)",
                    h.path)
        raise FsError(errno.EIO)

    def _not_moved(self, h: Handle) -> None:
        """:meth:`_keep_version`'s first half: EIO if our appends moved since ``h`` was opened for
        reading (also after a read: moved during it, its bytes may be of both)."""
        if h.moves_seen is None or h.moves_seen == h.item.moves:  # (read unlocked: one int)
            return
        if not h.read_state.failed:  # said once; every later read through it is EIO too
            h.read_state.failed = True
            log.warning(
                "%s: our appends went after another client's version while this handle was open for "
                "reading: it may have had the bytes they replaced: EIO (open the file again)",
                h.path,
            )
        raise FsError(errno.EIO)

    def _fetch_spans(self, h: Handle, size: int, offset: int) -> tuple[list[Span], int]:
        """The bytes of a read through ``h``, and the item's count of versions followed just
        before they were read (:attr:`StagedFile.followed`)."""
        followed = h.item.followed
        try:
            try:
                spans = self.prefetcher.read_spans(h.item, h.read_state, offset, size)
            except ReleasedRange:
                self._checkpoint(h.item, "a read at %d" % offset)
                spans = self.prefetcher.read_spans(h.item, h.read_state, offset, size)
        except Removed:
            # Another client removed it (within attr_ttl of our lookup): ESTALE for this read,
            # and the name is S3's to say from now on (the next open says ENOENT), not shown
            # for the rest of attr_ttl.
            self.namespace.forget(self.keymap.path(h.item.key))
            raise
        except Replaced as exc:
            if h.served:
                # The reader has bytes of the old version: it must not get another's, but may go
                # on in the same bytes under a new ETag (on AWS, another mount's chmod of a file
                # uploaded in parts), its check going on with them.
                if not self.changes.follow_same_bytes(h.path, h.item, exc.etag, failing="this read fails"):
                    raise
                self.prefetcher.follow(h.read_state, h.item.view().etag)
            else:
                # Opened on attributes cached before another client's new version: follow it now,
                # as an open a moment later would have.
                self.changes.follow_replaced(h.path, h.item)
                self.prefetcher.drop(h.read_state)
            followed = h.item.followed
            spans = self.prefetcher.read_spans(h.item, h.read_state, offset, size)
        return spans, followed

    def _size_told_late(self, h: Handle, before: int) -> None:
        """``h``'s first read is of another client's version, followed since ``h`` was opened (by
        this read, or another handle's): of another size than ``before``, the one the kernel
        holds (``h`` was opened on it), the kernel must be told. It cuts every read at the size
        it holds and asks for none past it (a ``cat`` during another machine's ``git checkout``
        read the new version's bytes cut at the old size: round 39): the next open of the path
        is ESTALE (:meth:`_size_told`), and the kernel looks it up again. A larger version cannot
        be read whole through ``h``: EIO, now and for every later read through it, never bytes
        of it cut (a smaller one is: the kernel takes a short read as the new end of the file)."""
        after = h.item.view().remote_size
        if after == before:
            return
        self.kernel_sizes.told(h.path, before)
        if after < before:
            return
        h.pin = Pin(-1, "", before, "")  # of a version whose bytes are gone
        h.read_state.failed = True
        log.warning("%s: another client's version (%d bytes) replaced the one this handle was opened on "
                    "(%d bytes) and the kernel would cut it there: EIO (opened again, it reads whole)",
                    h.path, after, before)
        raise FsError(errno.EIO)

    def _accessed(self, h: Handle) -> None:
        """The first read through a handle: atime as ``relatime`` says (``-o noatime``: never)."""
        if self.options.noatime:
            return
        now = self.clock.time()
        if h.item.accessed(now):  # else not due, or the pending upload stores it
            self.namespace.accessed(h.path, now)

    @fuse_operation
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        written = self._write(h, data, offset, h.append)
        if path:  # (the kernel's offset: for O_APPEND too, its size, where it put these bytes)
            self.kernel_sizes.grew(path, offset + written)
        return written

    @fuse_operation
    def fallocate(self, path: str, mode: int, offset: int, length: int, fh: int) -> int:
        """fallocate(2). S3 keeps no allocation, only bytes: mode 0 grows the file to
        ``offset + length`` (zeros, as a truncate up), ``FALLOC_FL_KEEP_SIZE`` alone changes
        nothing (room past the end: nothing to upload), ``FALLOC_FL_PUNCH_HOLE`` (with
        KEEP_SIZE, as Linux asks) and ``FALLOC_FL_ZERO_RANGE`` write zeros over the range's
        bytes in the file, uploaded as zeros (ZERO_RANGE without KEEP_SIZE growing the file).
        Other modes (collapse, insert, unshare) are EOPNOTSUPP."""
        h = self._handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        zeroing = filecalls.PUNCH_HOLE | filecalls.ZERO_RANGE
        if mode & ~(filecalls.KEEP_SIZE | zeroing) or mode & zeroing == zeroing or (
            mode & filecalls.PUNCH_HOLE and not mode & filecalls.KEEP_SIZE
        ):
            raise FsError(errno.EOPNOTSUPP, "fallocate mode %#x" % mode)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        end = offset + length
        if mode & zeroing:
            stop = min(end, h.item.size)
            for at in range(offset, stop, ZEROS_A_WRITE):
                zeros = bytes(min(ZEROS_A_WRITE, stop - at))
                if self._write(h, zeros, at, False) < len(zeros):
                    raise FsError(errno.ENOSPC, "the cache's disk is full")
        if not mode & filecalls.KEEP_SIZE and end > h.item.size:
            self._truncate_item(h.item, end, h)
        if not mode & filecalls.KEEP_SIZE and path:
            self.kernel_sizes.grew(path, end)
        return 0

    def _write(self, h: Handle, data: bytes, offset: int, append: bool) -> int:
        """Write ``data`` through ``h`` at ``offset`` (at the end: ``append``); bytes written."""
        self._keep_version(h, at_end=append)  # one that read bytes writes on them, never on others
        if self.uploader.checkpoint_needed(h.item, h.item.size if append else offset):
            self._checkpoint(h.item, "a write at %d" % offset)
        self._whole(h.item, h)
        if self.writeback is not None and self.staging.over_capacity():
            # Back-pressure: dirty files fill the cache, so wait for the background uploads.
            log.info("cache full of files waiting to upload: write waits for the uploads")
            self.writeback.drain(timeout=BACKPRESSURE_WAIT)
        if append:
            offset = h.item.size  # the uploader's check below sees an offset at or past the end
        self.uploader.before_write(h.item, offset, len(data))
        try:
            if WRITE_GATE:
                hold_at_write_gate(offset)
            written = self._write_staged(h, offset, data, append)
            self.uploader.after_write(h.item, None if append else offset, data[:written])
        finally:
            self.uploader.done_writing(h.item, offset, len(data))
        return written

    def _write_staged(self, h: Handle, offset: int, data: bytes, append: bool) -> int:
        """``data`` into the handle's staged file (at its end: ``append``); the count written,
        short when the cache's disk filled. With ``-o writeback`` a disk full of files waiting
        to upload makes the write wait for their uploads (their copies then make room) and try
        the rest once more: the disk can fill before ``cache_size`` does (another program, the
        journals, a small disk's blocks), and the back-pressure above only sees ``cache_size``."""

        def others_waiting() -> bool:
            return any(i is not h.item for i in self.staging.pending())

        try:
            written = h.item.write(offset, data, append=append)
        except OSError as exc:
            if self.writeback is None or not disk_full(exc) or not others_waiting():
                raise
            written = 0
        if written < len(data) and self.writeback is not None and others_waiting():
            log.info("the cache's disk is full of files waiting to upload: write waits for the uploads")
            self.writeback.drain(timeout=BACKPRESSURE_WAIT)
            try:
                written += h.item.write(offset + written, data[written:], append=append)
            except OSError as exc:
                if not written or not disk_full(exc):
                    raise
        return written

    def _checkpoint(self, item: StagedFile, why: str) -> None:
        """``why`` needs bytes of a file being streamed that the cache released (they are in S3 only,
        as parts): complete its upload first. The object then holds the file so far, and the
        item is a copy of it whose missing bytes come from S3."""
        log.info("%s: %s needs bytes the cache released: completing its upload first", item.key, why)
        self.changes.upload(item)

    def _truncate_item(self, item: StagedFile, length: int, h: Handle | None = None) -> None:
        if item.has_released():
            self._checkpoint(item, "a truncate to %d" % length)
        if length:
            self._whole(item, h)
        self.uploader.abandon(item, "truncated to %d bytes" % length)
        item.truncate(length)

    @fuse_operation
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._writable()
        if fh is not None and fh in self._handles:
            h = self._handle(fh)
            self._keep_version(h)
            self._truncate_item(h.item, length, h)
            return
        if _is_hidden(path):
            self._truncate_item(self._hidden_item(path), length)
            return
        attributes = self._attributes(path)
        if attributes.is_dir:
            raise FsError(errno.EISDIR)
        fh = self.open.__wrapped__(self, path, os.O_WRONLY)  # type: ignore[attr-defined]
        try:
            h = self._handle(fh)
            self._truncate_item(h.item, length, h)
            if self.writeback is None:
                try:
                    self.changes.upload(h.item)
                except FsError:
                    # Tried again in the background at the release below, as a close's that
                    # failed (before round 38 it waited for a sync, an fsync or the unmount).
                    h.close_failed = True
                    raise
        finally:
            self.release.__wrapped__(self, path, fh)  # type: ignore[attr-defined]

    @fuse_operation
    def flush(self, path: str, fh: int) -> None:
        h = self._handle(fh)
        if h.writable and self.writeback is None and h.item.dirty and not h.item.unlinked:
            try:
                self.changes.upload(h.item)
            except FsError:
                h.close_failed = True
                raise

    @fuse_operation
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        h = self._handle(fh)
        if h.item.dirty and not h.item.unlinked:
            try:
                self.changes.upload(h.item)
            except FsError:
                h.item.save(durable=True)  # not in S3: at least on this disk, for good
                raise

    @fuse_operation
    def release(self, path: str, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
        if h is None:
            return
        self.prefetcher.drop(h.read_state)
        if h.item.dirty and self.writeback is not None and not h.item.unlinked:
            self.writeback.submit(h.item)
        self.staging.release(h.item)
        if h.close_failed and self.writeback is None and self.staging.left_dirty(h.item):
            # Its close's upload failed (S3 away): tried again in the background, as with -o
            # writeback, not left until somebody touches the file again.
            self._background_uploads().retry_later(h.item)
        if h.writable:
            self.staging.uploaded(h.item)  # a large file leaves the cache once in S3 and closed

    @fuse_operation
    def unlink(self, path: str) -> None:
        self._writable()
        if _is_hidden(path):  # the last close of a file unlinked while open
            self._forget_hidden(path)
            return
        # Whether it is a directory is all an unlink needs: a listing says (no HEAD for the mode).
        known = self._known_attributes(path)
        seen = known if known is not None else self._attributes(path)
        if seen.is_dir:
            raise FsError(errno.EISDIR)
        if known is not None:
            self.namespace.check_not_shadowed(path, known)  # ESTALE: a directory of the name now
        # That version only, not one another client put since (unless -o conflict_check=off).
        self.changes.remove_file(path, (seen.etag or None) if self.options.conflict_check else None)
        self.kernel_sizes.forget(path)

    @fuse_operation
    def rename(self, old: str, new: str) -> None:
        self._writable()
        if _is_hidden(new):
            self._hide(old, new)
            return
        source = self._attributes(old)
        target: A.Attributes | None
        if source.is_dir:
            try:
                target = self._attributes(new)
            except FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                target = None
        else:
            # The kernel looked the target up just before this call and checked its type against
            # the source's (EISDIR, ENOTDIR); a file replaces a file: what we know of it will do.
            target = self._known_attributes(new)
            if target is not None:
                self.namespace.check_not_shadowed(new, target)  # ESTALE: a directory of the name now
        self._parent_dir(new)
        if source.is_dir:
            if target is not None and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if target is not None and not self.changes.is_empty_dir(new):
                raise FsError(errno.ENOTEMPTY)
            if new.startswith(old.rstrip("/") + "/"):
                raise FsError(errno.EINVAL)
        elif target is not None and target.is_dir:
            raise FsError(errno.EISDIR)
        self.changes.rename(old, new, source)
        if source.is_dir:
            self._move_hidden(old, new)
        else:
            self.kernel_sizes.moved(old, new)

    def _forget_hidden(self, path: str) -> None:
        """libfuse unlinks hidden name ``path`` after its file's last close, and the file goes.
        The kernel may still send an open or a stat by that name: a process that looked the
        file's first name up just before a ``rename`` replaced it opens (or stats) the node it
        found, which libfuse calls by this name. That was ENOENT, which a local disk never says
        there (the name always held a file; measured: 1 open in 60 of two readers of a file
        replaced 100 times).

        A small file (GONE_KEPT_BYTES, as files saved by a replace mostly are) stays openable
        by the name, as on a local disk, the last GONE_FILES_KEPT of them: the name keeps one
        open of it. A larger or older one is let go (an unlinked scratch file may be large),
        and its name is remembered (the last GONE_HIDDEN_KEPT): a call by it is ESTALE, and the
        kernel walks the path once more (LOOKUP_REVAL) to what the name holds now, the new
        file. That second walk can race another replace, where libfuse2 answers ENOENT
        (libfuse3 ESTALE), so the first kind is the one that holds up on both."""
        released = []
        with self._lock:
            item = self._hidden.pop(path, None)
            if item is None:
                return
            self._gone[path] = None
            while len(self._gone) > GONE_HIDDEN_KEPT:
                self._gone.popitem(last=False)
            if item.size <= GONE_KEPT_BYTES:
                self._gone_files[path] = item
            else:
                released.append(item)
            while len(self._gone_files) > GONE_FILES_KEPT:
                released.append(self._gone_files.popitem(last=False)[1])
        for old in released:
            self.staging.release(old)  # the count its hidden name held

    def _move_hidden(self, old: str, new: str) -> None:
        """Directory ``old`` is now ``new``: libfuse names the unlinked files in it by the new path."""
        old, new = old.rstrip("/") + "/", new.rstrip("/") + "/"
        with self._lock:
            for names in (self._hidden, self._gone, self._gone_files):
                for path in [p for p in names if p.startswith(old)]:
                    names[new + path[len(old) :]] = names.pop(path)

    # -- links ------------------------------------------------------------------------

    @fuse_operation
    def symlink(self, target: str, source: str) -> None:
        """Make ``target`` a link to ``source``: an object whose body is ``source``."""
        self._writable()
        self._parent_dir(target)
        uid, gid, _ = fuse_get_context()
        self.changes.symlink(target, source, SYMLINK_MODE, uid, gid)

    @fuse_operation
    def mknod(self, path: str, mode: int, dev: int) -> None:
        """A FIFO, socket or device: an empty object whose mode (and rdev) say what, as s3fs-fuse does."""
        self._writable()
        self._parent_dir(path)
        try:
            self._attributes(path)
            raise FsError(errno.EEXIST)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        if stat.S_ISREG(mode) or not stat.S_IFMT(mode):
            fh = self.create.__wrapped__(self, path, mode)  # type: ignore[attr-defined]
            try:
                self.changes.upload(self._handle(fh).item)
            finally:
                self.release.__wrapped__(self, path, fh)  # type: ignore[attr-defined]
            return
        uid, gid, _ = fuse_get_context()
        self.changes.mknod(path, mode, dev, uid, gid)

    @fuse_operation
    def link(self, target: str, source: str) -> None:
        """``ln source target``: EPERM, link(2)'s "the file system does not support hard links"
        (an S3 object has one key), with the log line that says so; without this method libfuse
        answered ENOSYS, which the kernel turns into the same EPERM, and the log had no word."""
        raise FsError(errno.EPERM, "hard links are not supported (an S3 object has one key): %s" % source)

    @fuse_operation
    def readlink(self, path: str) -> str:
        a = self.namespace.lookup_full(path)
        if not a.is_link:
            raise FsError(errno.EINVAL)
        return self.namespace.link_target(path, a.size)

    # -- metadata ---------------------------------------------------------------------------

    def _change_metadata(self, path: str, change: Change) -> None:
        self._writable()
        hidden = self._hidden_item(path) if _is_hidden(path) else None
        self.changes.change_metadata(path, change, hidden)

    @fuse_operation
    def chmod(self, path: str, mode: int) -> None:
        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            meta[A.META_PREFIX + "mode"] = str(stat.S_IFMT(cur.mode) | stat.S_IMODE(mode))
            return _with_posix(meta, cur)

        self._change_metadata(path, change)

    @fuse_operation
    def chown(self, path: str, uid: int, gid: int) -> None:
        """Only where the owner or group changes: a chown to the ones the file has sends nothing
        (its ctime stays). sqlite running as root fchowns every journal it opens, a reader's
        look at another mount's live journal too, to the database's owner: that self-copy made
        the other mount's delete of its journal (If-Match its version) fail, the journal stayed
        in S3 beside the committed database, and its next commit was "disk I/O error" (round 40)."""
        a = self._attributes(path)
        if uid in (-1, 0xFFFFFFFF, a.uid) and gid in (-1, 0xFFFFFFFF, a.gid):
            self._writable()
            return

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            meta = _with_posix(meta, cur)
            if uid != -1 and uid != 0xFFFFFFFF:
                meta[A.META_PREFIX + "uid"] = str(uid)
            if gid != -1 and gid != 0xFFFFFFFF:
                meta[A.META_PREFIX + "gid"] = str(gid)
            return meta

        self._change_metadata(path, change)

    @fuse_operation
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        """utimensat: each time a value (ns), UTIME_NOW or UTIME_OMIT; None: both now."""
        now = self.clock.time()
        atime, mtime = (_utime(times[0], now), _utime(times[1], now)) if times else (now, now)
        item = self._hidden_item(path) if _is_hidden(path) else self.staging.get(self.keymap.key(path))
        if item is not None:
            item.pin_times()

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            meta = _with_posix(meta, cur)
            if mtime is not None:
                meta[A.MTIME] = A.format_time(mtime)
            if atime is not None:
                meta[A.ATIME] = A.format_time(atime)
            return meta

        if atime is None and mtime is None:
            return  # both UTIME_OMIT: nothing changes, not even ctime
        self._change_metadata(path, change)

    # -- extended attributes ---------------------------------------------------------------

    def _facts(self, path: str) -> dict[str, bytes]:
        a = self._attributes(path)
        item = self.staging.get(self.keymap.key(path))
        digest = a.digest
        if not digest and not a.is_dir and not (item is not None and _live(item)):
            digest = self.namespace.stored_digest(path)  # a HEAD tells the x-amz-checksum-*, if any
        facts = {
            "s3.etag": a.etag,
            "s3.checksum": A.checksum_fact(digest, a.etag),
            "s3.storage_class": a.storage_class,
            "s3.state": item.state if item is not None else "clean",
        }
        if a.version_id:
            facts["s3.version_id"] = a.version_id
        return {k: v.encode() for k, v in facts.items() if v}

    def _metadata(self, path: str) -> dict[str, str]:
        if _is_hidden(path):  # fgetxattr of an unlinked, still open file: its own copy has it all
            return dict(self._hidden_item(path).view().metadata)
        item = self.staging.get(self.keymap.key(path)) if path != "/" else None
        if item is not None and (item.dirty or item.uploading):
            return dict(item.view().metadata)
        return self.namespace.lookup_full(path).metadata

    def gauges(self) -> dict[str, float]:
        """For metrics: the cache's disk use, bytes not yet in S3, files waiting to upload."""
        pending = self.staging.pending()
        return {
            "cache_bytes": self.staging.usage(),
            "dirty_bytes": sum(item.size for item in pending),
            "upload_queue_files": len(pending),
        }

    def status(self) -> dict[str, object]:
        """What ``s3fs-mount status`` shows: where from, cache use, files waiting to upload.

        Pending files come in the order their uploads last failed, those that did not first.
        Per pending file: its size, the bytes of it already in S3 (``uploaded``:
        of the upload under way, or of the last one), and ``writers``, the
        handles open for writing (1 or 0; such a file is not final yet).
        ``retrying``: of them, the files whose upload failed, tried again in the background
        (the next try in ``next_try`` s; None: under way).
        ``open_for_writing``: every file with a handle open for writing. Both lists are cut to fit
        one extended attribute (:func:`fitting`); ``pending_files`` and ``pending_bytes`` count
        every file waiting to upload. ``kernel_names``: the
        names of large directories the kernel was told to forget (:meth:`KernelNames.counts`),
        or None where it cannot be told. ``new_dirs``: the directories mkdir made whose objects
        are not in S3 yet (fs/newdirs.py), each with its state and last error, cut to fit as the
        other lists; ``new_dirs_count`` counts them all.
        """
        with self._lock:
            writing = {id(h.item): h.item for h in self._handles.values() if h.writable}
        pending = []
        failed_at = []
        for item in self.staging.pending():
            view = item.view()
            uploaded, error, when = self.uploader.progress(item)
            failed_at.append(when)
            pending.append(
                {
                    "path": self.keymap.path(view.key),
                    "size": view.size,
                    "state": item.state,
                    "uploaded": uploaded,
                    "error": error,
                    "writers": int(id(item) in writing),
                }
            )
        # The files that failed last go last: a sync goes on past those it tried and could not
        # upload, to the files behind them (the list is cut to fit one answer). Before round 37 a
        # head of failing files longer than the list stopped it there.
        order = sorted(range(len(pending)), key=failed_at.__getitem__)
        pending = [pending[i] for i in order]
        new_dirs = self.changes.new_dirs.waiting()
        with self._lock:
            queue = self.background
        retrying, next_try = queue.retrying() if queue is not None else (0, None)
        open_for_writing = []
        for item in writing.values():
            view = item.view()
            if not view.unlinked:
                open_for_writing.append(
                    {"path": self.keymap.path(view.key), "size": view.size, "dirty": view.dirty}
                )
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "cache_dir": self.staging.root,
            "cache_bytes": self.staging.usage(),
            "cache_size": self.options.cache_size,
            "cache_bound": self.staging.capacity,  # less than cache_size when the disk has less room
            "writeback": self.options.writeback,
            "pending": fitting(pending),
            "pending_files": len(pending),
            "pending_bytes": sum(p["size"] for p in pending),
            "retrying": retrying,
            "next_try": next_try,
            "open_for_writing": fitting(open_for_writing),
            "requests": self.request_summary(),
            "kernel_names": self.kernel_names.counts() if self.kernel_names is not None else None,
            "recovered": self.changes.recovered_counts(),
            "new_dirs": fitting(new_dirs),
            "new_dirs_count": len(new_dirs),
        }

    @fuse_operation
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name.startswith(A.UNSTORED_PREFIXES):
            # Not supported here, rather than absent: ls -l then stops asking for the SELinux
            # label and the ACL of every entry (it remembers the device), cp -a copies on.
            raise FsError(errno.ENOTSUP)
        if path == "/" and name == STATUS_XATTR:
            return json.dumps(self.status()).encode()
        if name.startswith(A.INFO_PREFIX):
            value = self._facts(path).get(name)
        else:
            value = A.xattr_of(self._metadata(path), name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    @fuse_operation
    def listxattr(self, path: str) -> list[str]:
        # Only what the user stored: the read-only s3.* facts stay readable by name, but listed
        # they would make rsync -X and cp -a try to copy (and remove) them.
        return sorted(A.xattrs_of(self._metadata(path)))

    @fuse_operation
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        if name in A.INFO_NAMES:
            # Read-only facts. Accepting (and ignoring) writes lets cp --preserve=xattr
            # and rsync -X copy a file that lists them. Any other s3.* name: ENOTSUP below.
            log.debug("setxattr %s %s: read-only, ignored", path, name)
            return
        A.require_user_name(name)  # (before any request; the rest of the name's rules in the change)

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            return A.with_xattr(meta, name, bytes(value), create=bool(options & XATTR_CREATE),
                                replace=bool(options & XATTR_REPLACE))

        self._change_metadata(path, change)

    @fuse_operation
    def removexattr(self, path: str, name: str) -> None:
        if name in A.INFO_NAMES:
            raise FsError(errno.EPERM)
        A.require_user_name(name)  # (before any request; the rest of the name's rules in the change)

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            return A.without_xattr(meta, name)

        self._change_metadata(path, change)


def _with_posix(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
    """Metadata with every POSIX key, so a change of one pins the others."""
    full = A.posix_metadata_of(cur)
    full.update({k: v for k, v in meta.items()})
    return full


#: utimensat's special tv_nsec values, as libfuse hands them on (with tv_sec 0).
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _utime(value: int, now: float) -> float | None:
    """One time of a utimens call in seconds; None for UTIME_OMIT."""
    if value == UTIME_OMIT:
        return None
    if value == UTIME_NOW:
        return now
    return value / 1e9


def _is_hidden(path: str | None) -> bool:
    """A name libfuse gives an unlinked file that is still open (never stored in S3)."""
    return path is not None and os.path.basename(path).startswith(HIDDEN_PREFIX)


def _live(item: StagedFile) -> bool:
    """A staged copy that is newer than S3's object (or may become so): it has the say."""
    return item.dirty or item.open_count > 0 or item.uploading


def _safe(bucket: str, prefix: str) -> str:
    tail = prefix.strip("/").replace("/", "%2F")
    return bucket + ("%2F" + tail if tail else "")
