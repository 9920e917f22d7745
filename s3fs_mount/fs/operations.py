"""The fusepy adapter: each FUSE call, in a few lines, over the units below it.

Every method runs inside :func:`fuse_operation`, which turns any failure
into an honest errno and one log line (see :mod:`.errors`).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import logging
import mimetypes
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.dirtimes import DirTimesWriter
from s3fs_mount.fs.errors import Conflict, FsError, fuse_entries, fuse_operation
from s3fs_mount.fs.fuselib import LIBFUSE_MAJOR, Operations, fuse_get_context
from s3fs_mount.fs.kernel_readahead import KernelReadahead
from s3fs_mount.fs.namespace import DIRECTORY_CONTENT_TYPE, Namespace
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.fs.paths import KeyMap
from s3fs_mount.fs.prefetch import Prefetcher, ReadState
from s3fs_mount.fs.staging import StagedFile, StagingCache
from s3fs_mount.fs.status import STATUS_XATTR
from s3fs_mount.fs.upload import Uploader, WritebackQueue, conflict_name
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.parts import PartLayout
from s3fs_mount.s3.store import ObjectInfo, RemoteStore, digest_of

log = logging.getLogger(__name__)

XATTR_CREATE, XATTR_REPLACE = 1, 2
SYMLINK_MODE = stat.S_IFLNK | 0o777
HIDDEN_PREFIX = ".fuse_hidden"
MAX_FUSE_THREADS = 16  # libfuse3 worker threads, all kept when idle (its default logs a complaint)
BACKPRESSURE_WAIT = 60.0  # seconds a write waits for uploads before it goes on anyway


@dataclass
class Handle:
    """One open file description."""

    item: StagedFile
    path: str
    writable: bool
    append: bool = False  # O_APPEND: every write lands at the end, whatever offset the kernel gives
    read_state: ReadState = field(default_factory=ReadState)
    accessed: bool = False  # a read through it has moved the file's atime (or found it need not)


class S3Operations(Operations):
    """A bucket (or a prefix of one) as a filesystem.

    ::

        >>> ops = S3Operations(store, 'mybucket', '', MountOptions())
        >>> FUSE(ops, '/mnt/s3', **ops.fuse_options())

    :param store: the connector, bound to the bucket's endpoint.
    :param bucket: the bucket to mount.
    :param prefix: the key prefix that is the mount's root ('' for all).
    :param options: the ``-o`` settings.
    :param mountpoint: where we are mounted (for the kernel's readahead; None in tests).
    :param server_full: says why uploads fail when the server is full (else None): ENOSPC then.
    """

    # fusepy: times in nanoseconds; read/write/flush/release of an unlinked file get path None.
    use_ns = True
    flag_nullpath_ok = True
    # fuselib answers getxattr of these itself (ENOTSUP), as getxattr below would.
    unstored_xattr_prefixes = A.UNSTORED_PREFIXES

    def __init__(
        self,
        store: RemoteStore,
        bucket: str,
        prefix: str,
        options: MountOptions,
        mountpoint: str | None = None,
        server_full: Callable[[], str | None] | None = None,
    ) -> None:
        self.store = store
        #: Why uploads fail when the server is out of space (a message), else None: the embedded
        #: server reads its log. Such a failure is ENOSPC, not EIO.
        self.server_full = server_full
        self.bucket = bucket
        self.options = options
        self.keymap = KeyMap(prefix)
        self.defaults = A.Defaults(options.uid, options.gid, options.umask)
        self.namespace = Namespace(
            store, bucket, self.keymap, self.defaults, options.attr_ttl, options.dir_ttl, options.attr_cache
        )
        self.staging = StagingCache(
            os.path.join(options.cache_dir, _safe(bucket, prefix)), bucket, options.cache_size
        )
        self.prefetcher = Prefetcher(
            store,
            bucket,
            options.readahead,
            workers=options.parallel,
            on_fetched=self.staging.grew,
            part_layout_of=self._part_layout_of,
            verify=options.checksum,
            checksum_of=lambda key, etag: self.namespace.known_digest(self.keymap.path(key), etag),
        )
        self.uploader = Uploader(
            store,
            bucket,
            options.part_size,
            options.multipart_threshold,
            options.parallel,
            self.staging,
            part_doubling=options.part_doubling,
        )
        self.writeback = (
            WritebackQueue(
                self.uploader, on_uploaded=self._uploaded_in_background, on_conflict=self._conflicted
            )
            if options.writeback
            else None
        )
        self._handles: dict[int, Handle] = {}
        #: .fuse_hidden path -> the unlinked file its handles still use (see _hide)
        self._hidden: dict[str, StagedFile] = {}
        self.kernel_readahead = KernelReadahead(mountpoint, options.kernel_readahead) if mountpoint else None
        self.unuploaded: list[str] | None = None  # set by destroy()
        self.dir_times: DirTimesWriter | None = None  # set by start()
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()  # guards _handles and _hidden

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
            # fstat, ftruncate and fchmod through its handles still have a name to go by.
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
            self.uploader.configure_checks(self.options.conflict_check)
            if self.options.checksum:
                self.store.configure_checksums(self.bucket)
            self.namespace.configure_directories()
            self.dir_times = DirTimesWriter(self.namespace)
            self.dir_times.start()
        self.namespace.load_root()
        return self.recover()

    def recover(self) -> list[str]:
        """Upload what a previous run left staged; returns the keys still pending."""
        recovered = self.staging.recover()
        for key, upload_id in self.staging.orphan_uploads:
            self.store.abort_multipart(key, upload_id, bucket=self.bucket)
        for item in recovered:
            for upload_id in list(item.upload_ids):
                self.uploader.abort_upload(item, upload_id)
            try:
                current = self.store.head(self.namespace.name(item.key))
            except S3Error as exc:
                if not exc.not_found:
                    log.error("recovery of %s: %s; kept staged", item.key, exc)
                    continue
                current = None
            if current is not None and current.etag in self.uploader.etags_of(item):
                # Uploaded, then killed before its record said so: nothing to do.
                item.mark_clean(item.generation, current.etag)
                log.info("recovered %s: already in S3", item.key)
                continue
            if current is not None and item.etag and current.etag != item.etag:
                conflict = conflict_name(item.key)
                log.warning("%s changed in S3 while our copy was staged: ours goes to %s", item.key, conflict)
                self.staging.rekey(item.key, conflict)
            try:
                self.uploader.flush(item)
                log.info("recovered and uploaded %s", item.key)
            except Conflict as exc:
                log.warning("recovered %s: %s", item.key, exc)
            except Exception as exc:
                log.error("recovered %s but could not upload it (%s); kept staged", item.key, exc)
        return [i.key for i in self.staging.pending()]

    def destroy(self, path: str) -> None:
        """Unmount: upload everything still dirty (``unuploaded`` says what could not be)."""
        self.unuploaded = self.finish()

    def finish(self) -> list[str]:
        """Upload every dirty file; returns the keys that stay staged."""
        if self.writeback is not None:
            while not self.writeback.drain(timeout=2.0):
                log.info("unmount: waiting for %d background uploads", len(self.staging.pending()))
        left = []
        pending = self.staging.pending()
        for n, item in enumerate(pending, 1):
            log.info("unmount: uploading %s (%d of %d, %d bytes)", item.key, n, len(pending), item.size)
            try:
                self.uploader.flush(item)
            except Exception as exc:
                log.error("could not upload %s at unmount (%s); it stays staged", item.key, exc)
                left.append(item.key)
        if self.dir_times is not None:
            self.dir_times.close()
        elif not self.options.ro:
            self.namespace.store_dir_times()
        return left

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

    def _item_attributes(self, item: StagedFile) -> A.Attributes:
        """A staged file's attributes: its pending metadata, local size and mtime."""
        with item.cond:
            a = A.attributes_from(
                item.metadata,
                item.size,
                item.mtime,
                self.defaults,
                "file",
                etag=item.etag,
                headers=dict(item.headers),
            )
            a.mtime, a.atime, a.ctime = item.mtime, item.atime, item.ctime
        return a

    def _tune_readahead(self) -> None:
        """On the first open: the kernel sets a file's readahead up after our open answers."""
        if self.kernel_readahead is not None:
            self.kernel_readahead.ensure()

    def _hidden_item(self, path: str) -> StagedFile:
        """The unlinked, still open file libfuse calls ``path`` (a .fuse_hidden name)."""
        with self._lock:
            item = self._hidden.get(path)
        if item is None:
            raise FsError(errno.ENOENT)
        return item

    def _hide(self, path: str, hidden: str) -> None:
        """libfuse's unlink of an open file: gone from S3 and from listings, alive through its handles."""
        item = self.staging.get(self.keymap.key(path))
        self._remove_file(path)
        if item is not None:
            with self._lock:
                self._hidden[hidden] = item

    def _parent_dir(self, path: str) -> None:
        parent = KeyMap.split(path)[0]
        if not self._attributes(parent).is_dir:
            raise FsError(errno.ENOTDIR)

    def _whole(self, item: StagedFile) -> None:
        """Before the first write to an object's copy, fetch all of it (crash safety)."""
        with item.cond:
            need = not item.dirty and item.remote_size > 0
        if need:
            self.prefetcher.ensure(item, 0, item.remote_size)

    def _new_handle(self, item: StagedFile, path: str, writable: bool, append: bool = False) -> int:
        fh = next(self._next_fh)
        with self._lock:
            self._handles[fh] = Handle(item, path, writable, append)
        return fh

    def _upload(self, item: StagedFile) -> None:
        try:
            self.uploader.flush(item)
        except Conflict as exc:
            self._conflicted(exc)
            raise
        except Exception as exc:
            full = self.server_full() if self.server_full is not None else None
            log.error("upload of %s failed, kept staged: %s", item.key, full or exc)
            raise FsError(errno.ENOSPC if full else errno.EIO, "upload failed") from exc
        self._remember_uploaded(item)

    def _conflicted(self, exc: Conflict) -> None:
        """Another client's version stays at the path; ours now lives under the conflict name."""
        self.namespace.forget(self.keymap.path(exc.key))
        self.namespace.forget(KeyMap.split(self.keymap.path(exc.saved_as))[0])

    def _uploaded_in_background(self, item: StagedFile) -> None:
        """The writeback queue put ``item`` in S3: what S3 has is known, and it may leave the cache."""
        if not item.unlinked:
            self._remember_uploaded(item)
        self.staging.uploaded(item)

    def _remember_uploaded(self, item: StagedFile) -> None:
        """What we uploaded is what S3 has: no HEAD needed to know it."""
        self.namespace.remember(self.keymap.path(item.key), self._item_attributes(item))

    # -- attributes and directories ---------------------------------------------------

    @fuse_operation
    def getattr(self, path: str, fh: int | None = None) -> dict[str, object]:
        h = self._handles.get(fh) if fh is not None else None
        if h is not None:  # fstat: the open file's own copy (it may be unlinked, or renamed)
            return self._item_attributes(h.item).stat()
        return self._attributes(path).stat()

    def opendir(self, path: str) -> int:
        return next(self._next_fh)  # distinct per open directory: fuselib keeps its listing by it

    @fuse_operation
    def readdir(self, path: str, fh: int) -> Iterator[str | tuple[str, dict[str, object] | None, int]]:
        """Names with their attributes (on libfuse3 they fill the kernel's cache: readdirplus),
        handed out as the listing arrives: the first before the last page is fetched."""
        if not self._attributes(path).is_dir:
            raise FsError(errno.ENOTDIR)
        return fuse_entries("readdir", path, self._entries(path))

    def _entries(self, path: str) -> Iterator[str | tuple[str, dict[str, object] | None, int]]:
        prefix = self.keymap.dir_prefix(path)
        staged = {}  # written here, maybe not yet in S3: what they are here wins
        for item in self.staging.under(prefix):
            rest = item.key[len(prefix) :]
            if rest and "/" not in rest and _live(item):
                staged[rest] = item
        yield "."
        yield ".."
        # A directory's mode and owner are on its holder, which a listing does not show: the kernel
        # asks (getattr) rather than be told the defaults.
        for name, a in self.namespace.iter_dir(path):
            item = staged.pop(name, None)
            if item is not None:
                a = self._item_attributes(item)
            yield name, None if a.is_dir and not a.complete else a.stat(), 0
        for name, item in sorted(staged.items()):
            yield name, self._item_attributes(item).stat(), 0

    @fuse_operation
    def mkdir(self, path: str, mode: int) -> None:
        self._writable()
        self._parent_dir(path)
        try:
            self._attributes(path)
            raise FsError(errno.EEXIST)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        uid, gid, _ = fuse_get_context()
        mode = stat.S_IFDIR | (stat.S_IMODE(mode))
        now = time.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        etag = self.namespace.write_dir(path, meta, new=True)
        made = A.attributes_from(meta, 0, now, self.defaults, "dir", etag=etag)
        made.nlink = 2  # empty: known, so its subdirectories are counted from here on
        self.namespace.remember(path, made)
        self.namespace.known_empty(path)
        self.namespace.entry_changed(KeyMap.split(path)[0], now)

    @fuse_operation
    def rmdir(self, path: str) -> None:
        self._writable()
        if path == "/":
            raise FsError(errno.EBUSY)
        if not self._attributes(path).is_dir:
            raise FsError(errno.ENOTDIR)
        prefix = self.keymap.dir_prefix(path)
        if not self.namespace.is_empty_dir(path) or any(self.staging.under(prefix)):
            raise FsError(errno.ENOTEMPTY)
        self.store.remove(self.namespace.name(self.keymap.marker_key(path)))
        self.store.remove(self.namespace.name(self.keymap.folder_key(path)))
        self.namespace.forget(path, gone=True)
        self.namespace.entry_changed(KeyMap.split(path)[0])

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
        now = time.time()
        meta = A.posix_metadata(stat.S_IFREG | stat.S_IMODE(mode), uid, gid, now)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        item, _ = self.staging.acquire(self.keymap.key(path))
        item.reset(0, "", meta, {"Content-Type": content_type}, now)
        item.set_metadata(meta)  # dirty: an empty new file is uploaded too
        self.namespace.remember(path, A.attributes_from(meta, 0, now, self.defaults, "file"))
        self.namespace.entry_changed(KeyMap.split(path)[0], now)
        return self._new_handle(item, path, True)

    @fuse_operation
    def open(self, path: str, flags: int) -> int:
        self._tune_readahead()
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            self._writable()
        key = self.keymap.key(path)
        staged = self.staging.get(key)
        if staged is not None and (staged.dirty or staged.uploading):
            attributes = None
        else:
            attributes = self.namespace.lookup_full(path)
            if attributes.is_dir:
                raise FsError(errno.EISDIR)
        item, created = self.staging.acquire(key)
        try:
            if attributes is not None:
                a = attributes
                if created:
                    item.reset(a.size, a.etag, a.metadata, a.headers, a.mtime)
                else:  # close-to-open: follow another client's new version, never an older one
                    item.adopt(a.size, a.etag, a.metadata, a.headers, a.mtime, a.seen_at)
                with item.cond:  # an atime a read moved (relatime), not yet stored
                    if a.atime is not None and (item.atime is None or item.atime < a.atime):
                        item.atime = a.atime
            if writable and flags & os.O_TRUNC:
                self._truncate_item(item, 0)
        except BaseException:
            self.staging.release(item)
            raise
        return self._new_handle(item, path, writable, bool(writable and flags & os.O_APPEND))

    @fuse_operation
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        h = self._handle(fh)
        if not h.accessed:
            h.accessed = True
            self._accessed(h)
        return self.prefetcher.read(h.item, h.read_state, offset, size)

    def _accessed(self, h: Handle) -> None:
        """The first read through a handle: atime as ``relatime`` says (``-o noatime``: never)."""
        if self.options.noatime:
            return
        now = time.time()
        item = h.item
        with item.cond:
            if not A.relatime_due(item.atime, item.mtime, item.ctime, now):
                return
            item.atime = now
            clean = not (item.dirty or item.uploading or item.unlinked)
        if clean:  # else the pending upload stores it
            self.namespace.accessed(h.path, now)

    @fuse_operation
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        self._whole(h.item)
        if self.writeback is not None and self.staging.over_capacity():
            # Back-pressure: dirty files fill the cache, so wait for the background uploads.
            log.info("cache full of files waiting to upload: write waits for the uploads")
            self.writeback.drain(timeout=BACKPRESSURE_WAIT)
        if h.append:
            offset = h.item.size  # the uploader's check below sees an offset at or past the end
        self.uploader.before_write(h.item, offset)
        written = h.item.write(offset, data, append=h.append)
        self.uploader.after_write(h.item)
        return written

    def _truncate_item(self, item: StagedFile, length: int) -> None:
        if length:
            self._whole(item)
        self.uploader.abandon(item)
        item.truncate(length)

    @fuse_operation
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._writable()
        if fh is not None and fh in self._handles:
            self._truncate_item(self._handle(fh).item, length)
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
            self._truncate_item(h.item, length)
            if self.writeback is None:
                self._upload(h.item)
        finally:
            self.release.__wrapped__(self, path, fh)  # type: ignore[attr-defined]

    @fuse_operation
    def flush(self, path: str, fh: int) -> None:
        h = self._handle(fh)
        if h.writable and self.writeback is None and h.item.dirty and not h.item.unlinked:
            self._upload(h.item)

    @fuse_operation
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        h = self._handle(fh)
        if h.item.dirty and not h.item.unlinked:
            try:
                self._upload(h.item)
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
        if h.writable:
            self.staging.uploaded(h.item)  # a large file leaves the cache once in S3 and closed

    @fuse_operation
    def unlink(self, path: str) -> None:
        self._writable()
        if _is_hidden(path):  # the last close of a file unlinked while open
            with self._lock:
                self._hidden.pop(path, None)
            return
        if self._attributes(path).is_dir:
            raise FsError(errno.EISDIR)
        self._remove_file(path)

    def _remove_file(self, path: str) -> None:
        key = self.keymap.key(path)
        item = self.staging.get(key)
        if item is not None:
            self.uploader.abandon(item)
            if item.open_count > 0:  # open handles go on reading: keep every byte locally
                self.prefetcher.ensure(item, 0, item.remote_size)
        self.store.remove(self.namespace.name(key))
        self.staging.forget(key)
        self.namespace.forget(path, gone=True)
        self.namespace.entry_changed(KeyMap.split(path)[0])

    @fuse_operation
    def rename(self, old: str, new: str) -> None:
        self._writable()
        if _is_hidden(new):
            self._hide(old, new)
            return
        source = self._attributes(old)
        try:
            target: A.Attributes | None = self._attributes(new)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            target = None
        self._parent_dir(new)
        if source.is_dir:
            if target is not None and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if target is not None and not self.namespace.is_empty_dir(new):
                raise FsError(errno.ENOTEMPTY)
            if new.startswith(old.rstrip("/") + "/"):
                raise FsError(errno.EINVAL)
            self._rename_dir(old, new, source)
        else:
            if target is not None and target.is_dir:
                raise FsError(errno.EISDIR)
            self._rename_file(old, new)
        now = time.time()
        for parent in {KeyMap.split(old)[0], KeyMap.split(new)[0]}:
            self.namespace.entry_changed(parent, now)

    def _rename_file(self, old: str, new: str) -> None:
        old_key, new_key = self.keymap.key(old), self.keymap.key(new)
        item = self.staging.get(old_key)
        if item is not None and item.dirty:
            self._upload(item)  # S3 has no rename: the object must be there to copy
        info = self.store.head(self.namespace.name(old_key))
        etag = self.store.copy_object(  # of the version just seen: not one another client put meanwhile
            self.namespace.name(old_key), self.namespace.name(new_key), if_match=info.etag, source_info=info
        )
        self.store.remove(self.namespace.name(old_key))
        self.staging.rekey(old_key, new_key)
        moved = self.namespace.from_info(info)
        moved.etag = etag or info.etag
        self.namespace.forget(old, gone=True)
        self.namespace.remember(new, moved)
        item = self.staging.get(new_key)
        if item is not None:
            with item.cond:
                item.etag = moved.etag

    def _rename_dir(self, old: str, new: str, source: A.Attributes) -> None:
        """Every key under the directory, copied in parallel, then deleted. Not atomic."""
        old_prefix, new_prefix = self.keymap.dir_prefix(old), self.keymap.dir_prefix(new)
        for item in list(self.staging.under(old_prefix)):
            if item.dirty:
                self._upload(item)
        entries = list(self.store.list_all(old_prefix, bucket=self.bucket))
        keys = [e.key for e in entries]
        folder = self.keymap.folder_key(old)
        self.store.run_parallel(
            (lambda e=e: self._copy_key(e.key, new_prefix + e.key[len(old_prefix) :], e.size))
            for e in entries
        )
        try:  # a _$folder$ object (the holder of its metadata, on some servers) moves too
            info = self.store.head(self.namespace.name(folder))
            self.store.copy_object(
                self.namespace.name(folder),
                self.namespace.name(self.keymap.folder_key(new)),
                source_info=info,
            )
        except S3Error as exc:
            if not exc.not_found:
                raise
        if old_prefix not in keys:  # an implicit or _$folder$ directory: give the new one a marker
            self.store.put(self.namespace.name(new_prefix), b"", {"Content-Type": DIRECTORY_CONTENT_TYPE})
        failed = self.store.delete_keys(keys + [folder], bucket=self.bucket)
        if failed:
            log.error("rename %s: could not delete %d old keys, e.g. %s", old, len(failed), failed[0])
        for item in list(self.staging.under(old_prefix)):
            self.staging.rekey(item.key, new_prefix + item.key[len(old_prefix) :])
        self.namespace.forget(old, gone=True)  # the parents' link counts follow
        self.namespace.forget_tree(old)
        self.namespace.forget_tree(new)
        moved = dataclasses.replace(source, complete=False)  # its holder's ETag is new: asked at next use
        self.namespace.remember(new, moved)

    def _copy_key(self, source: str, destination: str, size: int) -> None:
        """Server-side copy; a directory marker is re-made instead (some servers can't copy one)."""
        src, dst = self.namespace.name(source), self.namespace.name(destination)
        if source.endswith("/"):
            info = self.store.head(src)
            self.store.put(dst, b"", {**info.headers, **info.metadata})
        else:
            self.store.copy_object(src, dst, size=size)  # the listing's size: no HEAD

    # -- links ------------------------------------------------------------------------

    @fuse_operation
    def symlink(self, target: str, source: str) -> None:
        """Make ``target`` a link to ``source``: an object whose body is ``source``."""
        self._writable()
        self._parent_dir(target)
        uid, gid, _ = fuse_get_context()
        now = time.time()
        meta = A.posix_metadata(SYMLINK_MODE, uid, gid, now)
        body = source.encode("utf-8", "surrogateescape")
        etag = self.store.put(self.namespace.name(self.keymap.key(target)), body, meta)
        self.namespace.remember(
            target, A.attributes_from(meta, len(body), now, self.defaults, "file", etag=etag)
        )
        self.namespace.entry_changed(KeyMap.split(target)[0], now)

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
                self._upload(self._handle(fh).item)
            finally:
                self.release.__wrapped__(self, path, fh)  # type: ignore[attr-defined]
            return
        uid, gid, _ = fuse_get_context()
        now = time.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            meta[A.META_PREFIX + "rdev"] = str(dev)
        etag = self.store.put(self.namespace.name(self.keymap.key(path)), b"", meta)
        self.namespace.remember(path, A.attributes_from(meta, 0, now, self.defaults, "file", etag=etag))
        self.namespace.entry_changed(KeyMap.split(path)[0], now)

    @fuse_operation
    def readlink(self, path: str) -> str:
        a = self.namespace.lookup_full(path)
        if not a.is_link:
            raise FsError(errno.EINVAL)
        data = self.store.get_range(self.namespace.name(self.keymap.key(path)), 0, a.size)
        return data.decode("utf-8", "surrogateescape")

    # -- metadata ---------------------------------------------------------------------------

    def _change_metadata(
        self, path: str, change: Callable[[dict[str, str], A.Attributes], dict[str, str]]
    ) -> None:
        """Apply ``change`` to the object's metadata: pending upload, or a conditional self-copy."""
        self._writable()

        def stamped(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            new = change(meta, cur)
            new[A.CTIME] = A.format_time(time.time())  # every change of attributes is one
            return new

        if _is_hidden(path):  # fchmod and friends on an unlinked open file: kept with it, never stored
            item = self._hidden_item(path)
            current = self._item_attributes(item)
            item.set_metadata(stamped(dict(current.metadata), current))
            return
        key = self.keymap.key(path)
        item = self.staging.get(key) if path != "/" else None
        if item is not None and (item.dirty or item.uploading):
            current = self._attributes(path)
            with item.cond:
                new = stamped(dict(item.metadata), current)
            A.check_metadata_size(new)
            item.set_metadata(new)
            return
        current = self.namespace.lookup_full(path)
        if current.is_dir:  # its holder, written anew (some servers cannot copy an empty marker)
            self.namespace.change_dir(path, stamped)
            return
        base = dict(current.metadata)
        if current.atime is not None and current.atime != A.parse_time(base.get(A.ATIME, "")):
            base[A.ATIME] = A.format_time(current.atime)  # moved by a read (relatime), not yet stored
        new = stamped(base, current)
        A.check_metadata_size(new)
        name = self.namespace.name(key)
        info = ObjectInfo(key, current.size, current.etag, current.mtime, current.metadata, current.headers)
        try:
            etag = self.store.copy_object(
                name, name, new, replace_metadata=True, if_match=current.etag or None, source_info=info
            )
        except S3Error as exc:
            if exc.precondition_failed:
                self.namespace.forget(path)
                log.error("%s changed in S3 since we read it; metadata change refused", path)
                raise FsError(errno.EIO) from exc
            raise
        updated = A.attributes_from(
            new,
            current.size,
            current.mtime,
            self.defaults,
            "file",
            etag=etag,
            headers=current.headers,
        )
        self.namespace.remember(path, updated)
        if item is not None:
            item.metadata_stored(new, etag)

    @fuse_operation
    def chmod(self, path: str, mode: int) -> None:
        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            meta[A.META_PREFIX + "mode"] = str(stat.S_IFMT(cur.mode) | stat.S_IMODE(mode))
            return _with_posix(meta, cur)

        self._change_metadata(path, change)

    @fuse_operation
    def chown(self, path: str, uid: int, gid: int) -> None:
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
        now = time.time()
        atime, mtime = (_utime(times[0], now), _utime(times[1], now)) if times else (now, now)
        item = self._hidden_item(path) if _is_hidden(path) else self.staging.get(self.keymap.key(path))
        if item is not None:
            with item.cond:
                item.times_pinned = True

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
            "s3.checksum": digest or digest_of(a.etag),
            "s3.storage_class": a.storage_class,
            "s3.state": item.state if item is not None else "clean",
        }
        if a.version_id:
            facts["s3.version_id"] = a.version_id
        return {k: v.encode() for k, v in facts.items() if v}

    def _metadata(self, path: str) -> dict[str, str]:
        item = self.staging.get(self.keymap.key(path)) if path != "/" else None
        if item is not None and (item.dirty or item.uploading):
            with item.cond:
                return dict(item.metadata)
        return self.namespace.lookup_full(path).metadata

    def _part_layout_of(self, key: str, etag: str, size: int, parts: int) -> PartLayout | None:
        """Where a multipart object's parts begin and end, for the check of its reads (one or
        two HEADs; None: unknown)."""
        try:
            return self.store.part_layout(self.namespace.name(key), size, parts)
        except S3Error as exc:
            log.debug("part sizes of %s unknown: %s", key, exc)
            return None

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

        Per pending file: its size, the bytes of it already in S3 (``uploaded``:
        of the upload under way, or of the last one), and ``writers``, the
        handles open for writing (1 or 0; such a file is not final yet).
        ``open_for_writing``: every file with a handle open for writing.
        """
        with self._lock:
            writing = {id(h.item): h.item for h in self._handles.values() if h.writable}
        pending = []
        for item in self.staging.pending():
            with item.cond:
                pending.append(
                    {
                        "path": self.keymap.path(item.key),
                        "size": item.size,
                        "state": item.state,
                        "uploaded": item.uploaded_bytes,
                        "error": item.upload_error,
                        "writers": int(id(item) in writing),
                    }
                )
        open_for_writing = []
        for item in writing.values():
            with item.cond:
                if not item.unlinked:
                    open_for_writing.append(
                        {"path": self.keymap.path(item.key), "size": item.size, "dirty": item.dirty}
                    )
        conn = self.store.connection
        return {
            "bucket": self.bucket,
            "prefix": self.keymap.prefix,
            "endpoint": conn.endpoint,
            "cache_dir": self.staging.root,
            "cache_bytes": self.staging.usage(),
            "cache_size": self.options.cache_size,
            "writeback": self.options.writeback,
            "pending": pending,
            "open_for_writing": open_for_writing,
            "requests": conn.stats.summary(),
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
            value = A.xattrs_of(self._metadata(path)).get(name)
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
        if name.startswith(A.INFO_PREFIX):
            # Read-only facts. Accepting (and ignoring) writes lets cp --preserve=xattr
            # and rsync -X copy a file that lists them.
            log.debug("setxattr %s %s: read-only, ignored", path, name)
            return
        header = A.header_for_xattr(name)

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            if options & XATTR_CREATE and header in meta:
                raise FsError(errno.EEXIST)
            if options & XATTR_REPLACE and header not in meta:
                raise FsError(errno.ENODATA)
            meta[header] = A.encode_value(bytes(value))
            return meta

        self._change_metadata(path, change)

    @fuse_operation
    def removexattr(self, path: str, name: str) -> None:
        if name.startswith(A.INFO_PREFIX):
            raise FsError(errno.EPERM)
        header = A.header_for_xattr(name)

        def change(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            if header not in meta:
                raise FsError(errno.ENODATA)
            del meta[header]
            return meta

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
