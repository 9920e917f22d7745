"""The FUSE binding: mfusepy on libfuse3 when the machine has it, else on libfuse2.

Everything else imports FUSE names from here, so the choice is made once.

Why libfuse3: libfuse2 caps each read and write the kernel hands us at
128 KiB, and a Python FUSE call costs ~90 us, so a 1 GiB read was ~8,000
calls and CPU-bound. libfuse3 negotiates 1 MiB requests (``max_pages``)
and fills the kernel's attribute cache from ``readdir`` (readdirplus).
mfusepy is the maintained fork of fusepy that speaks both libraries with
fusepy's API (bench/README.md has the numbers).

``S3FS_MOUNT_LIBFUSE=2`` forces libfuse2; ``FUSE_LIBRARY_PATH`` (mfusepy's
own variable) names a library file outright.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from ctypes.util import find_library
from typing import Any, Protocol, TypeVar

from s3fs_mount.fs.errors import FsError, Stale, errno_for
from s3fs_mount.s3.errors import RemoteStoreError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: glibc's sizeof(pthread_mutex_t), where libfuse's directory handle begins (other machines:
#: the kernel keeps the names of large directories).
_PTHREAD_MUTEX_SIZE = {"x86_64": 40, "aarch64": 48}
T = TypeVar("T")


def _library() -> str | None:
    """The libfuse file to load: libfuse3 unless told otherwise, else libfuse2."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return os.environ["FUSE_LIBRARY_PATH"]
    if os.environ.get("S3FS_MOUNT_LIBFUSE", "3") == "3":
        return find_library("fuse3") or find_library("fuse")
    return find_library("fuse")


def _import_mfusepy() -> Any:
    # mfusepy reads FUSE_LIBRARY_PATH at import; set it for the import only, so that
    # processes we start (tests, helpers) choose for themselves.
    saved = os.environ.get("FUSE_LIBRARY_PATH")
    path = _library()
    if path:
        os.environ["FUSE_LIBRARY_PATH"] = path
    try:
        import mfusepy
    finally:
        if saved is None:
            os.environ.pop("FUSE_LIBRARY_PATH", None)
    return mfusepy


mfusepy = _import_mfusepy()
FuseOSError = mfusepy.FuseOSError
Operations = mfusepy.Operations
fuse_get_context = mfusepy.fuse_get_context

LIBFUSE_MAJOR: int = mfusepy.fuse_version_major
"""2 or 3: the libfuse the binding loaded."""

#: libfuse worker threads whose Python thread state is kept between calls (see FUSE._wrapper).
MAX_HELD_THREAD_STATES = 64
FUSE_READDIR_PLUS = 1  # readdir flag: the kernel asks for attributes too (libfuse3)
FUSE_FILL_DIR_PLUS = 2  # filler flag: this entry's attributes are complete
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # fuse_common.h: the kernel asks with attributes only now and then
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # fuse_common.h: a getattr showing a new mtime drops the file's pages

#: struct fuse_direntplus (linux/fuse.h): fuse_entry_out (nodeid, generation, entry_valid,
#: attr_valid, entry_valid_nsec, attr_valid_nsec, a fuse_attr of 88 bytes), then fuse_dirent
#: (ino, off, namelen, type) and the name, padded to 8 bytes.
_ATTR_VALID_AT = 24
_ATTR_VALID_NSEC_AT = 36
_NAMELEN_AT = 144
_DIRENTPLUS_HEAD = 152
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
#: Names waiting for the kernel to be told to forget them (see KernelNames): past this, no more are queued.
KERNEL_NAMES_QUEUED = 200_000
#: Directories whose node ids KernelNames keeps (the ones read last).
KERNEL_NAMES_DIRECTORIES = 256
#: How often KernelNames looks for names whose time has come.
KERNEL_NAMES_PERIOD = 0.25
#: Names an EntryNotifier tells the kernel to forget per system call.
NOTIFY_BATCH = 512
FUSE_NOTIFY_INVAL_ENTRY = 3  # linux/fuse.h: the notification code of fuse_lowlevel_notify_inval_entry
IOCB_CMD_PWRITE = 1  # linux/aio_abi.h
#: io_setup, io_destroy, io_submit, io_getevents: Linux's native AIO system calls, by machine.
_AIO_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4)}
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
#: fuse_out_header (len, error: the notification's code, unique: 0) and fuse_notify_inval_entry_out
#: (parent, namelen, flags), as linux/fuse.h lays them out; the name and a NUL follow.
_NOTIFY_HEADER = struct.Struct("=IiQQII")
#: struct iocb (linux/aio_abi.h): data (our index), key, rw_flags, opcode, reqprio, fildes, buf,
#: nbytes, offset, reserved2, flags, resfd.
_IOCB = struct.Struct("=QIIHhIQQqQII")

__all__ = ["FUSE", "FuseOSError", "Operations", "fuse_get_context", "KernelNames", "LIBFUSE_MAJOR"]


class TypeOnly(dict):
    """A readdir entry's attributes when only its file type is known (``{"st_mode": S_IFDIR}``):
    the kernel gets the type (d_type) and no attributes to cache, so it looks the name up
    when it needs them."""


class Unsettled(dict):
    """A readdir entry's attributes when its type is certain but its mode and owner are not
    known (a listed file: they are its metadata's, which no listing carries).

    With readdirplus the kernel gets the entry (a dentry and an inode: an ``unlink`` or
    ``rename`` of the name makes no lookup) with **no attribute validity**, so the first
    ``stat`` (or permission check, or read) asks ``getattr`` for the stored mode: what
    these attributes say of mode and owner is never shown. Elsewhere (a plain readdir,
    libfuse2, a libfuse whose directory handle is not laid out as expected) the type alone
    goes out, as for :class:`TypeOnly`."""


class CallObserver(Protocol):
    """What the FUSE binding tells of each call: its name, duration and result (0 or -errno)."""

    def fuse_call(self, operation: str, seconds: float, result: int) -> None: ...


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, with readdirplus and ``ftruncate`` handles on libfuse3.

    An operations ``readdir`` that returns ``(name, attrs, 0)`` with a full
    ``attrs`` dict (as ``getattr`` returns it) gives the kernel that entry's
    attributes with the name, so ``ls -l`` makes no lookup per entry. libfuse3
    passes such attributes on only for entries filled with an offset, so each
    open directory handle (``opendir`` must return distinct handles) keeps the
    iterator ``readdir`` returned and hands its entries out by index as the
    kernel asks for them (:class:`DirStream`): the first go out before the
    operations have the last, and only the one entry the kernel's buffer had
    no room for is held between calls. ``releasedir`` drops it.

    The kernel is asked to want attributes in every readdir (its ``readdirplus_auto``,
    which asks with them in a directory's first call and after lookups only, is turned
    off at init): ``rm -rf`` reads a whole directory before it unlinks anything, so its
    names past the first reply were each looked up (a HEAD each). A large directory's
    calls after its first go without attributes as the kernel's own choice had them (a
    node in libfuse per name handed). An entry whose attributes are :class:`Unsettled`
    goes out with them and no attribute validity (patched into libfuse's reply).
    A plain readdir still gives each entry's type (``st_mode`` alone): without it
    every entry was DT_UNKNOWN and ``find`` looked each one up. An entry whose
    attributes are a :class:`TypeOnly` gives its type in both, and no attributes. Names of a large
    directory that go out with attributes are queued to the operations'
    ``kernel_names`` (:class:`KernelNames`), whose directory node ids this class
    finds in libfuse's readdir handle; while the kernel holds more of them than
    it may, a readdirplus call hands out one such name (:meth:`KernelNames.make_room`).

    ``getxattr`` of a name under the operations' ``unstored_xattr_prefixes``
    is ENOTSUP without a call into the operations (``ls -l`` asks two such
    names per entry until one says ENOTSUP).

    ``truncate(path, length, fh)`` gets the open file's handle when the
    caller truncated a descriptor (libfuse2 called that ``ftruncate``);
    mfusepy 3.1 drops it on libfuse3.

    ``getattr`` answers are filled in with :func:`set_stat` (the fields looked up once).

    libfuse's ``auto_inval_data`` is turned off at init: with it, every getattr answer
    showing a file's new mtime (the first after each write: the kernel does not move mtime
    itself) had the kernel drop all the file's pages, and that raced with writes of other
    processes. The kernel checks for a write that grows the file before it drops the pages,
    not while: a write that began in between put its bytes in a page then dropped, a read
    re-read that page before the write reached us and kept it, and the written bytes read as
    zeros (an append) or as the old ones (an overwrite) until the next drop. The kernel
    still drops them when a getattr shows another size, and at an open whose reply does not
    keep them (``keep_cache``): that is how another client's new version is read
    (close-to-open).

    ``create(path, mode, flags)`` is called as such: mfusepy 3.1 inspects the
    operations' signature on every create (3% of a small-file loop).

    Each libfuse worker thread keeps its Python thread state from one call to
    the next. ctypes calls into Python from a thread Python did not start by
    making a thread state for the call and deleting it on return (a frame
    stack mapped and unmapped, ...): seven times per small file written, and
    15-20% of the mount's CPU in a loop writing them. One more
    ``PyGILState_Ensure``, never released, keeps the state alive. libfuse3
    keeps its workers (``max_idle_threads``); libfuse2 may end an idle one,
    whose state is then lost, so at most ``MAX_HELD_THREAD_STATES`` are held.
    """

    def __init__(
        self, operations: Any, mountpoint: str, observer: CallObserver | None = None, **kwargs: Any
    ) -> None:
        #: The operations' KernelNames (if any): bound to this session at init, stopped at destroy.
        self._kernel_names: KernelNames | None = getattr(operations, "kernel_names", None)
        self._fuse_pointer: int | None = None  # libfuse's struct fuse, set at init
        self._notifier: EntryNotifier | None = None  # set at init, with KernelNames
        self._layout_warned = False  # unguarded: a race warns twice, no more
        #: False once an Unsettled entry was not found where expected (never set True again).
        #: Unguarded: a readdir racing the change checks one more entry, and takes it back too.
        self._expire_ok = True
        #: True once init turned the kernel's readdirplus_auto off (every readdir asks with
        #: attributes). Set in init, before any readdir; read only after.
        self._plus_always = False
        #: Told of every call (``fuse_call(operation, seconds, result)``); None: nothing is timed.
        self._observer = observer
        #: GUARDED_BY(_listings_lock): directory handle -> its entries, as handed out.
        self._listings: dict[int, DirStream] = {}
        self._listings_lock = threading.Lock()
        self._thread_states = ThreadStates(MAX_HELD_THREAD_STATES)
        #: Entries (besides . and ..) of the first reply of a directory stream (0: as many as fit).
        self._first_reply: int = getattr(operations, "first_readdir_reply", 0)
        prefixes = getattr(operations, "unstored_xattr_prefixes", ())
        self._unstored = tuple(p.encode() for p in prefixes)
        super().__init__(operations, mountpoint, **kwargs)  # serves until unmounted

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self._thread_states.keep()
        if self._observer is None:
            return super()._wrapper(func, *args, **kwargs)
        started = time.monotonic()
        result = super()._wrapper(func, *args, **kwargs)
        name = func.__name__.removesuffix("_fuse_3").removesuffix("_fuse_2")
        self._observer.fuse_call(name, time.monotonic() - started, result if isinstance(result, int) else 0)
        return result

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        fh = fip.contents.fh
        decoded = self._decode(path)
        where = decoded or "/"  # the directory, as KernelNames names it
        with self._listings_lock:
            stream = self._listings.get(fh)
        stop = -1  # the index at which this reply ends though the kernel's buffer has room
        if stream is None or not stream.can_seek(offset):  # a first call, or a rewind
            if self._first_reply > 0:
                stop = offset + 2 + self._first_reply  # . and .. too (see the operations)
            if self._kernel_names is not None and path is not None:
                node = self._dir_node_id(buf, fh)
                if node is not None:
                    self._kernel_names.directory(where, node)
            stream = DirStream(iter(self.operations.readdir(decoded, fh)))
            with self._listings_lock:
                self._listings[fh] = stream
        plus = bool(flags & FUSE_READDIR_PLUS)
        names = self._kernel_names
        large = names is not None and names.is_large(where)
        if plus and offset and self._plus_always and large and names is not None:
            # As the kernel's own choice (readdirplus_auto) would ask: a large directory's calls
            # after its first with attributes only where names of it were looked up since its
            # last call (a walk that stats: ls -l, du), else its names alone (find: no node each).
            plus = names.advised(where)
        # Past the names the kernel may hold, one a reply (KernelNames.make_room: a bound).
        room = 1 if plus and large and names is not None and names.make_room() else -1
        kind = mfusepy.c_stat()
        index = offset
        handed: list[str] = []  # names that went out with their attributes (a dentry each)
        encoding, errors, use_ns = self.encoding, self.errors, self.use_ns
        try:
            while True:
                try:
                    item = stream.at(index, filled=index > offset)
                except Exception:
                    with self._listings_lock:
                        self._listings.pop(fh, None)  # spent: a call again lists again, from its offset
                    raise
                if item is None:
                    return 0  # the end (or a failure, told at the next call)
                st, fill_flags, before = None, 0, -1
                if isinstance(item, str):
                    name = item
                else:
                    name, attrs, _ = item
                    full = plus and bool(attrs) and not isinstance(attrs, TypeOnly)
                    if full and isinstance(attrs, Unsettled):
                        before = self._filled_length(buf, fh) if self._expire_ok else -1
                        full = before >= 0  # else its type alone
                    if full:
                        st = mfusepy.c_stat()
                        set_stat(st, attrs, use_ns)
                        fill_flags = FUSE_FILL_DIR_PLUS
                    elif attrs:
                        # A plain readdir: the type alone, for d_type (libfuse copies it), so that find
                        # need not stat each entry to learn it is no directory.
                        st = kind
                        st.st_mode = attrs["st_mode"]
                stp = None if st is None else ctypes.byref(st)
                raw = name.encode(encoding, errors)
                if filler(buf, raw, stp, index + 1, fill_flags) != 0:
                    return 0  # the kernel's buffer is full: it asks again from this index
                if before >= 0 and not self._expire_attributes(buf, fh, before, raw):
                    return 0  # taken back: asked again from this index, and handed its type alone
                stream.taken()
                index += 1
                if index == stop:
                    return 0  # a short first reply: the kernel asks again from this index
                if fill_flags:
                    handed.append(name)
                    if len(handed) == room:
                        return 0  # more are there: the kernel asks again from this index
        finally:
            # Queued once a call (the operations say whether the directory is large as they list it).
            if handed and names is not None and (large or names.is_large(where)):
                names.forget_later_all(where, handed)

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        super().init_fuse_3(conn, config)
        if conn:
            # Not auto_inval_data, libfuse's default: see the class docstring.
            conn.contents.want &= ~FUSE_CAP_AUTO_INVAL_DATA
            # Not handle_killpriv_v2 (no getxattr security.capability before each write): libfuse
            # 3.14 cannot send it (asking aborts the mount), and it would not spare a file's first
            # write, the one small files have (bench/README.md, round 34, helper 8).
        if self._kernel_names is not None and conn:
            # Every readdir with attributes (see the class docstring); large directories as before.
            conn.contents.want &= ~FUSE_CAP_READDIRPLUS_AUTO
            self._plus_always = True
        fuse = mfusepy._libfuse.fuse_get_context().contents.fuse  # valid inside this call only
        self._fuse_pointer = fuse  # how a readdir's directory handle is recognised
        if self._kernel_names is not None:
            lib = mfusepy._libfuse
            lib.fuse_get_session.restype = ctypes.c_void_p
            lib.fuse_get_session.argtypes = [ctypes.c_void_p]
            notify = lib.fuse_lowlevel_notify_inval_entry
            notify.restype = ctypes.c_int
            notify.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
            session = lib.fuse_get_session(fuse)
            encoding, errors = self.encoding, self.errors
            lib.fuse_session_fd.restype = ctypes.c_int
            lib.fuse_session_fd.argtypes = [ctypes.c_void_p]

            def forget_each(names: list[tuple[int, bytes]]) -> list[int]:
                return [notify(session, parent, raw, len(raw)) for parent, raw in names]

            notifier = self._notifier = EntryNotifier(lib.fuse_session_fd(session), forget_each)
            self._kernel_names.start(
                lambda names: notifier.invalidate([(p, name.encode(encoding, errors)) for p, name in names]),
                "io_submit batches" if notifier.batched else "one libfuse call a name",
            )

    def destroy(self, private_data: Any) -> None:
        if self._kernel_names is not None:
            self._kernel_names.stop()  # its thread ends here: libfuse closes the device after this call
        if self._notifier is not None:
            self._notifier.close()
        return super().destroy(private_data)

    def _handle_words(self, buf: Any, fh: int) -> tuple[int, ...] | None:
        """libfuse 3's directory handle (``struct fuse_dh``: ``buf``) as 64-bit words from the
        ``struct fuse`` pointer on, if it is laid out as expected (the pointer and our ``fh``
        where the layout puts them), else None.

        After the handle's mutex come the ``struct fuse`` pointer, the request, the reply's
        buffer (``contents``), two pointers, its length and size (two ints), two ints, our
        ``fh``, an int and the directory's node id."""
        mutex = _PTHREAD_MUTEX_SIZE.get(platform.machine())
        if not buf or not self._fuse_pointer or mutex is None:
            return None
        # Exactly the handle's bytes (its mutex and 80 more): a byte past its end may be an
        # unmapped page of a thread's malloc arena (reading 192 bytes crashed the mount).
        words = struct.unpack("10Q", ctypes.string_at(buf + mutex, 80))
        if words[0] == self._fuse_pointer and words[7] == fh:
            return words
        return None

    def _filled_length(self, buf: Any, fh: int) -> int:
        """How many bytes of readdirplus entries libfuse holds for this call's reply (-1: its
        handle is not laid out as expected, or holds no buffer yet, when it is told to grow it)."""
        words = self._handle_words(buf, fh)
        if words is None:
            self._layout_unexpected()
            return -1
        return words[5] & 0xFFFFFFFF  # len, the first of two unsigned ints (little-endian)

    def _expire_attributes(self, buf: Any, fh: int, before: int, raw: bytes) -> bool:
        """The entry the filler just added at ``before`` (of name ``raw``) goes out with no
        attribute validity (its :class:`Unsettled` attributes: the kernel keeps the dentry, and
        asks getattr at the first stat). False if the entry is not found as expected: it is
        taken out of the reply again (the caller hands it again at the next call, its type
        alone) and this is not tried again on this mount (libfuse counted the name as looked
        up: its node stays until unmount)."""
        words = self._handle_words(buf, fh)
        if words is None:  # it was a moment ago, before the filler: nothing to take back by
            raise RuntimeError("libfuse's directory handle changed under a readdir")
        contents, length = words[2], words[5] & 0xFFFFFFFF
        size = _DIRENTPLUS_HEAD + len(raw)
        if contents and length - before == size + -size % 8:
            entry = contents + before
            head = ctypes.string_at(entry, size)
            nodeid = _U64.unpack_from(head, 0)[0]
            namelen = _U32.unpack_from(head, _NAMELEN_AT)[0]
            if nodeid and namelen == len(raw) and head[_DIRENTPLUS_HEAD:] == raw:
                ctypes.memset(entry + _ATTR_VALID_AT, 0, 8)
                ctypes.memset(entry + _ATTR_VALID_NSEC_AT, 0, 4)
                return True
        self._expire_ok = False
        ctypes.c_uint32.from_address(buf + _PTHREAD_MUTEX_SIZE[platform.machine()] + 5 * 8).value = before
        log.warning(
            "this libfuse's readdirplus entries are not laid out as expected: files whose mode "
            "is not known yet are listed without their attributes (each looked up on its own)"
        )
        return False

    def _layout_unexpected(self) -> None:
        if not self._layout_warned:
            self._layout_warned = True
            log.warning(
                "this libfuse's directory handle is not laid out as expected: the names of large "
                "directories stay in the kernel's cache (and libfuse's) until memory runs short"
            )

    def _dir_node_id(self, buf: Any, fh: int) -> int | None:
        """The node id of the directory a readdir is of, from libfuse's ``struct fuse_dh`` (``buf``).

        The high-level API hands the operations a path only; the kernel names a directory by
        node id. libfuse 3's handle holds, after its mutex, the ``struct fuse`` pointer, then
        four pointers, four ints, our ``fh``, an int and the node id: it is read only where
        the pointer and ``fh`` are both found where that layout puts them (else None, and the
        directory's names are left to the kernel).
        """
        words = self._handle_words(buf, fh)
        if words is not None and words[9]:
            return words[9]
        self._layout_unexpected()
        return None

    def open(self, path: bytes | None, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations.open(self._decode(path), fi.flags)
        kept = getattr(self.operations, "keeps_kernel_pages", None)
        if kept is not None and kept(fi.fh):
            fi.keep_cache = 1  # else the kernel drops the file's pages at this open
        bypass = getattr(self.operations, "bypasses_kernel_pages", None)
        if bypass is not None and bypass(fi.fh):
            fi.direct_io = 1
        return 0

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # mfusepy's, with set_stat: a stat per entry is what du and ls -l of a large directory make
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        fh = (fip.contents if self.raw_fi else fip.contents.fh) if fip else None
        set_stat(buf.contents, self.operations.getattr(self._decode(path), fh), self.use_ns)
        return 0

    def releasedir(self, path: bytes | None, fip: Any) -> int:
        with self._listings_lock:
            self._listings.pop(fip.contents.fh, None)
        return super().releasedir(path, fip)

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        # ls -l asks two of these per entry: answer at once, before any decoding or exception.
        if self._unstored and name.startswith(self._unstored):
            return -errno.ENOTSUP
        return super().getxattr(path, name, value, size, *args)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(self._decode(path), length, fh)

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations.create(self._decode(path), mode, fi.flags)
        return 0

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # With the operations' read_spans, each span of the blocks that hold the bytes is copied
        # straight into libfuse's buffer: a read straddling two blocks was joined into new bytes
        # (a 1 MiB allocation and a copy), then copied again by mfusepy (bench/README.md, round 34).
        read_spans = getattr(self.operations, "read_spans", None)
        if read_spans is None:
            return int(super().read(path, buf, size, offset, fip))
        fh = fip.contents if self.raw_fi else fip.contents.fh
        spans: Sequence[tuple[bytes, int, int]] = read_spans(self._decode(path), size, offset, fh)
        if sum(stop - start for _, start, stop in spans) > size:
            raise FuseOSError(errno.EIO)  # never past libfuse's buffer
        into = ctypes.cast(buf, ctypes.c_void_p).value or 0
        copied = 0
        for data, start, stop in spans:
            source = ctypes.cast(data, ctypes.c_void_p).value or 0  # bytes: its own memory, no copy
            ctypes.memmove(into + copied, source + start, stop - start)
            copied += stop - start
        return copied

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # The operations get libfuse's own buffer as a memoryview, not a copy of it (mfusepy's
        # string_at: 1 GiB copied per GiB written). The operations must not keep it, nor a
        # slice of it, past their return: it is released then (a use of it raises ValueError).
        fh = fip.contents if self.raw_fi else fip.contents.fh
        data = libfuse_bytes(buf, size)
        try:
            return self.operations.write(self._decode(path), data, offset, fh)
        finally:
            data.release()

    def _decode(self, path: bytes | None) -> str | None:
        """A path as the operations take it (None for an unlinked file's handle)."""
        return None if path is None else path.decode(self.encoding, self.errors)


def libfuse_bytes(buf: Any, size: int) -> memoryview:
    """The ``size`` bytes at ``buf`` (a ctypes pointer into libfuse's memory) as a byte
    memoryview, without a copy. Valid only until the FUSE call returns: release it then."""
    if not size:
        return memoryview(b"")
    address = ctypes.cast(buf, ctypes.c_void_p).value
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")


#: The ``struct stat`` fields of this machine's c_stat, and the timespec of each time field.
_STAT_FIELDS = frozenset(name for name, _ in mfusepy.c_stat._fields_)
_STAT_TIMES = {t: t + "spec" for t in ("st_atime", "st_mtime", "st_ctime") if t + "spec" in _STAT_FIELDS}
_NS = 10**9


def set_stat(st: Any, attrs: dict[str, Any], use_ns: bool = False) -> None:
    """Fill ``st`` (a c_stat) from a getattr dict, as mfusepy's ``set_st_attrs`` does (keys it
    has no field for are skipped), with the fields looked up once, not twice per key: a
    readdirplus of a large directory fills one per entry."""
    for key, val in attrs.items():
        spec = _STAT_TIMES.get(key)
        if spec is not None:
            timespec = getattr(st, spec)
            if use_ns:
                timespec.tv_sec, timespec.tv_nsec = divmod(int(val), _NS)
            else:
                timespec.tv_sec = int(val)
                timespec.tv_nsec = int((val - timespec.tv_sec) * 1e9)
        elif key in _STAT_FIELDS:
            setattr(st, key, val)


class DirStream:
    """The entries of one open directory, handed out by index as the kernel asks for them.

    Entries come from ``entries`` (an iterator) in order; the one at the current
    index stays until the kernel takes it (its buffer may have been full). An
    index behind that is a rewind: :meth:`can_seek` says so, and the caller
    starts a new stream. A failure after some entries went out in the same
    call is raised at the next call, so those entries are not lost; a stream
    that raised is spent. One thread at a time: the kernel serializes the
    readdir calls of one open directory.
    """

    def __init__(self, entries: Iterator[Any]) -> None:
        self._entries = entries
        self._index = 0  # the index of _current, or of the next entry the iterator gives
        self._current: Any = None  # the entry at _index, taken from the iterator, not yet handed out
        self._error: Exception | None = None

    def can_seek(self, index: int) -> bool:
        """Can the entry at ``index`` still be had (it is not behind the ones handed out)?"""
        return index >= self._index

    def at(self, index: int, filled: bool = False) -> Any:
        """The entry at ``index`` (not behind the current one); None past the end. ``filled``:
        the caller handed entries out in this call, so a failure waits for the next one."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        while True:
            if self._current is None:
                try:
                    self._current = next(self._entries)
                except StopIteration:
                    return None
                except Exception as exc:
                    if not filled:
                        raise
                    self._error = exc
                    return None
            if self._index >= index:
                return self._current
            self.taken()  # an entry the kernel skipped (a seekdir)

    def taken(self) -> None:
        """The kernel took the entry at the current index."""
        self._current = None
        self._index += 1


class KernelNames:
    """Tells the kernel to forget names of large directories once their entry timeout has passed.

    Linux keeps a dentry and an inode for every name it looked up (or was handed by
    readdirplus) until memory runs short: a timeout that has passed makes it ask us
    again, not forget (only virtiofs deletes stale dentries). libfuse keeps a node,
    in our process, for each such inode until the kernel forgets it, so a walk of a
    directory of a million names grew the mount by ~200 bytes a name
    (bench/README.md). Names queued by :meth:`forget_later` (by the FUSE binding: those
    of a :meth:`large` directory that readdirplus handed the kernel; by the operations:
    lookups in one) are invalidated
    (``FUSE_NOTIFY_INVAL_ENTRY``) ``delay`` seconds later by a thread of
    ours, never from a FUSE call (the kernel holds the directory's lock while it
    waits for our answer). The kernel then drops the dentry, evicts the inode and
    sends FORGET, and libfuse frees its node. Whoever uses the name again is looked
    up again, as after the timeout anyway. The thread hands the due names to its
    ``forget`` in batches (:class:`EntryNotifier`: one system call each): one call a
    name fell behind a quiet walk (bench/README.md).

    The kernel names a directory by node id: :meth:`directory` records the id of each
    directory read (the FUSE binding finds it in libfuse's readdir handle); names of a
    directory whose id is not known are not queued.

    **A bound on what piles up.** A quiet walk hands out ~30,000 names a second and the
    kernel takes ~21,000 forgets a second (bench/README.md): the names the kernel holds,
    and libfuse's nodes with them, grew through the walk. Past ``hold`` names held (queued,
    not yet told), :meth:`make_room` has a readdir hand out one name a reply, after waiting
    (at most ``delay``) until the oldest is due if none is yet, and wakes the thread: the
    walk goes at the pace of the forgetting, whatever the two speeds. A readdir cannot wait
    for the forgetting itself: the kernel holds the directory's lock (shared) while it
    waits for our answer, and each invalidation takes it exclusively; a wait until a name
    is due holds nothing the thread could do meanwhile, and the short reply lets go of the
    lock.

    :param delay: seconds from queueing to forgetting (the kernel's entry timeout, or more).
    :param clock: what ``delay`` is measured by.
    :param limit: most names queued; more are not queued (the kernel keeps those).
    :param hold: names held past which readdir replies are cut short (:meth:`make_room`).
    :param wait: ``wait(seconds)``: how :meth:`make_room` waits (default: until :meth:`stop`).

    GUARDED_BY(_lock): ``_due``, ``_nodes``, ``_large``, ``_advised``, ``queued``, ``forgotten``,
    ``unknown``, ``overflow``, ``batches``, ``peak``, ``shortened``. Set once by :meth:`start`:
    ``_forget``, ``_how``, ``_thread``.
    """

    def __init__(
        self,
        delay: float,
        clock: Callable[[], float] = time.monotonic,
        limit: int = KERNEL_NAMES_QUEUED,
        hold: int = KERNEL_NAMES_QUEUED,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        self.delay = delay
        self.clock = clock
        self.limit = limit
        self.hold = hold
        self._lock = threading.Lock()
        self._due: deque[tuple[float, int, str]] = deque()  # (when, directory node id, name), in time order
        self._nodes: dict[str, int] = {}  # directory path -> its node id, the last DIRECTORIES read
        self._large: dict[str, bool] = {}  # large directories (paths), the last DIRECTORIES said so
        self._advised: set[str] = set()  # large directories a name of which was looked up since advised()
        self.queued = 0  #: names queued, in all
        self.forgotten = 0  #: names the kernel dropped when told
        self.unknown = 0  #: names the kernel no longer had (or whose directory had gone)
        self.overflow = 0  #: names not queued: the queue was full
        self.batches = 0  #: calls of ``forget`` (each with up to NOTIFY_BATCH names)
        self.peak = 0  #: most names held at once (queued, not yet told)
        self.shortened = 0  #: readdir replies cut to one name (:meth:`make_room`)
        self._forget: Callable[[list[tuple[int, str]]], list[int]] | None = None
        self._how = ""  # how ``forget`` tells the kernel, for the log
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._wake = threading.Event()  # the thread looks for due names now, not at its next period
        self._wait = wait if wait is not None else self._stopped.wait

    def directory(self, path: str, node: int) -> None:
        """Directory ``path`` has node id ``node`` (it is being read)."""
        with self._lock:
            _keep_recent(self._nodes, path, node)

    def large(self, path: str) -> None:
        """Directory ``path`` is large: the names handed out with their attributes are forgotten."""
        with self._lock:
            _keep_recent(self._large, path, True)

    def is_large(self, path: str) -> bool:
        """Whether :meth:`large` was said of directory ``path`` (of the last ones it was said of)."""
        with self._lock:
            return path in self._large

    def forget_later(self, parent: str, name: str) -> None:
        """Name ``name`` of directory ``parent`` (a path), just looked up, is to be forgotten
        ``delay`` s from now; a large ``parent`` is :meth:`advised`."""
        with self._lock:
            if parent in self._large:
                self._advised.add(parent)
        self.forget_later_all(parent, [name])

    def advised(self, path: str) -> bool:
        """Whether a name of large directory ``path`` was looked up (:meth:`forget_later`) since
        this was last asked of it: its next readdir call hands attributes, as the kernel's
        ``readdirplus_auto`` asks for them after lookups (its ``FUSE_I_ADVISE_RDPLUS``)."""
        with self._lock:
            if path in self._advised:
                self._advised.discard(path)
                return True
            return False

    def forget_later_all(self, parent: str, names: list[str]) -> None:
        """Names ``names`` of directory ``parent`` (a path) are to be forgotten ``delay`` s from now."""
        with self._lock:
            node = self._nodes.get(parent)
            if node is None:
                return
            room = max(0, self.limit - len(self._due))
            when = self.clock() + self.delay
            self._due.extend((when, node, name) for name in names[:room])
            self.queued += min(room, len(names))
            self.overflow += max(0, len(names) - room)
            self.peak = max(self.peak, self._held())

    def held(self) -> int:
        """Names queued and not yet told (the kernel, and libfuse, hold them)."""
        with self._lock:
            return self._held()

    def _held(self) -> int:
        """:meth:`held`, with ``_lock`` held by the caller."""
        return self.queued - self.forgotten - self.unknown

    def make_room(self) -> bool:
        """Before a readdir of a large directory hands out names with their attributes: False
        while no more than ``hold`` names are held; else one name for this reply (True), after
        a wait (at most ``delay``) until the oldest queued is due if none is, with the thread
        woken to tell the kernel. Never waits for the telling (see the class)."""
        with self._lock:
            if self._held() <= self.hold:
                return False
            self.shortened += 1
            oldest = self._due[0][0] if self._due else None
        if oldest is not None:
            early = oldest - self.clock()
            if early > 0:
                self._wait(min(early, self.delay))
        self._wake.set()
        return True

    def counts(self) -> dict[str, int]:
        """What was queued, told and held, for the mount's status."""
        with self._lock:
            return {
                "queued": self.queued,
                "forgotten": self.forgotten,
                "unknown": self.unknown,
                "not_queued": self.overflow,
                "held": self._held(),
                "peak_held": self.peak,
                "shortened_replies": self.shortened,
            }

    def start(self, forget: Callable[[list[tuple[int, str]]], list[int]], how: str = "") -> None:
        """Forget due names from a thread of ours with ``forget([(parent node id, name), ...])``, which
        returns a result per name (0, or -errno); ``how`` it tells the kernel goes in the log."""
        self._forget, self._how = forget, how
        self._thread = threading.Thread(target=self._run, name="kernel-names", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more forgetting (the session is ending); what is queued stays as it is."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.queued:
                log.info(
                    "kernel names: %d queued to forget, %d forgotten, %d no longer known, %d not queued "
                    "(the queue was full), %d still queued; told in %d batches (%s); at most %d held at "
                    "once, %d readdir replies cut to one name (over %d held)",
                    self.queued,
                    self.forgotten,
                    self.unknown,
                    self.overflow,
                    len(self._due),
                    self.batches,
                    self._how,
                    self.peak,
                    self.shortened,
                    self.hold,
                )

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(KERNEL_NAMES_PERIOD)
            self._wake.clear()
            if self._stopped.is_set():
                break
            try:
                self.forget_due()
            except Exception:  # noqa: BLE001 - never end the thread: the next round tries again
                log.exception("telling the kernel to forget names failed")

    def forget_due(self) -> int:
        """Tell the kernel to forget every name whose time has come; returns how many it dropped."""
        forget = self._forget
        if forget is None:
            return 0
        now = self.clock()
        with self._lock:
            due: list[tuple[int, str]] = []
            while self._due and self._due[0][0] <= now:
                _, node, name = self._due.popleft()
                due.append((node, name))
        dropped = 0
        for start in range(0, len(due), NOTIFY_BATCH):
            if self._stopped.is_set():
                break
            results = forget(due[start : start + NOTIFY_BATCH])
            told = results.count(0)
            dropped += told
            with self._lock:
                self.batches += 1
                self.forgotten += told
                self.unknown += len(results) - told
        return dropped


class EntryNotifier:
    """Tells the kernel to forget names (``FUSE_NOTIFY_INVAL_ENTRY``), many per system call.

    libfuse's ``fuse_lowlevel_notify_inval_entry`` writes one message to the FUSE
    device per call; through ctypes each call gives up the GIL and must take it
    again, which, while the FUSE threads run Python, took ~150 us a name and fell
    behind a walk of a large directory (bench/README.md). Here the same messages
    (the kernel's ABI: ``fuse_out_header`` with ``unique`` 0 and the notification
    code, ``fuse_notify_inval_entry_out``, the name and a NUL) are written to the
    device by Linux's native AIO: one ``io_submit`` of up to NOTIFY_BATCH writes,
    which the device carries out one by one as plain writes (each a message), then
    one ``io_getevents`` for their results: the GIL is taken again once a batch.

    The device is written through a duplicate of libfuse's descriptor, ours until
    :meth:`close`: libfuse closes its own at unmount, before the session ends and
    KernelNames's thread with it, and a number closed may be a new file's by the next
    write (libfuse's own call then writes to -1, harmlessly). Written after the unmount,
    each message fails on its own (the kernel has no such names any more).

    Where the machine has no such calls, or they fail, the names go to ``fallback``
    (libfuse's call, a name at a time). One thread at a time (KernelNames's).

    :param fd: the FUSE device (libfuse's session's), written to only.
    :param fallback: ``fallback([(parent node id, name), ...])`` -> 0 or -errno for each.
    """

    def __init__(self, fd: int, fallback: Callable[[list[tuple[int, bytes]]], list[int]]) -> None:
        self._fallback = fallback
        #: the system calls' numbers (io_setup, io_destroy, io_submit, io_getevents), by machine
        self._calls = _AIO_SYSCALLS.get(platform.machine())
        #: the AIO context (io_setup's, NOTIFY_BATCH writes deep); None: the fallback is used
        self._context: int | None = None
        self._fd = -1  # our duplicate of the device's descriptor (close-on-exec), while _context is set
        self._events = (ctypes.c_int64 * (4 * NOTIFY_BATCH))()  # struct io_event: data, obj, res, res2
        if self._calls is None or fd < 0:
            return
        context = ctypes.c_ulong(0)
        if _LIBC.syscall(ctypes.c_long(self._calls[0]), ctypes.c_long(NOTIFY_BATCH), ctypes.byref(context)):
            log.info("io_setup failed (%s): names are forgotten a call each", os.strerror(ctypes.get_errno()))
            return
        self._context = context.value
        self._fd = os.dup(fd)

    @property
    def batched(self) -> bool:
        """Whether names go to the kernel a batch per system call (else through the fallback)."""
        return self._context is not None

    def invalidate(self, names: list[tuple[int, bytes]]) -> list[int]:
        """Tell the kernel to forget each ``(parent node id, name)``; returns 0 or -errno for each
        (more than NOTIFY_BATCH names are cut into batches)."""
        if self._context is not None:
            try:
                results: list[int] = []
                for start in range(0, len(names), NOTIFY_BATCH):
                    results += self._batch(self._context, names[start : start + NOTIFY_BATCH])
                return results
            except OSError as exc:  # the call, not a name: names told already are told again, harmlessly
                log.warning(
                    "io_submit to the FUSE device failed (%s): names are forgotten a call each now", exc
                )
                self.close()
        return self._fallback(names)

    def _batch(self, context: int, names: list[tuple[int, bytes]]) -> list[int]:
        fixed = _NOTIFY_HEADER.size + 1  # a message's length but its name's
        messages = [
            _NOTIFY_HEADER.pack(fixed + len(raw), FUSE_NOTIFY_INVAL_ENTRY, 0, parent, len(raw), 0)
            + raw
            + b"\0"
            for parent, raw in names
        ]
        data = ctypes.create_string_buffer(b"".join(messages))
        at = ctypes.addressof(data)
        blocks = []
        for index, message in enumerate(messages):
            blocks.append(_IOCB.pack(index, 0, 0, IOCB_CMD_PWRITE, 0, self._fd, at, len(message), 0, 0, 0, 0))
            at += len(message)
        iocbs = ctypes.create_string_buffer(b"".join(blocks))
        first = ctypes.addressof(iocbs)
        pointers = (ctypes.c_uint64 * len(names))(*range(first, first + _IOCB.size * len(names), _IOCB.size))
        results = [-errno.EIO] * len(names)
        done = 0
        while done < len(names):
            submitted = _aio(self._calls[2], context, len(names) - done, ctypes.byref(pointers, 8 * done))
            if submitted == 0:
                raise OSError(errno.EAGAIN, "io_submit took no write")
            reaped = 0
            while reaped < submitted:  # each write was carried out in io_submit: their results are in
                got = _aio(
                    self._calls[3], context, submitted - reaped, submitted - reaped, self._events, None
                )
                for k in range(got):
                    results[self._events[4 * k]] = min(0, self._events[4 * k + 2])
                reaped += got
            done += submitted
        return results

    def close(self) -> None:
        """Let go of the AIO context and our descriptor (no call of ours is under way); the
        fallback from now on."""
        if self._context is not None and self._calls is not None:
            _LIBC.syscall(ctypes.c_long(self._calls[1]), ctypes.c_ulong(self._context))
            os.close(self._fd)
        self._context, self._fd = None, -1


def _aio(number: int, context: int, *args: Any) -> int:
    """AIO system call ``number`` on ``context``, again on EINTR; :raises OSError: it failed."""
    while True:
        result = _LIBC.syscall(ctypes.c_long(number), ctypes.c_ulong(context), *args)
        if result >= 0:
            return int(result)
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _keep_recent(recent: dict[str, T], key: str, value: T) -> None:
    """``recent[key] = value`` as its newest entry; the oldest goes past KERNEL_NAMES_DIRECTORIES."""
    recent.pop(key, None)
    recent[key] = value
    if len(recent) > KERNEL_NAMES_DIRECTORIES:
        del recent[next(iter(recent))]


class ThreadStates:
    """Keeps the Python thread state of each thread that calls :meth:`keep`, up to ``limit``.

    See :class:`FUSE` for why. ``held`` counts the threads whose state is kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # immutable after __init__
        self.held = 0  # GUARDED_BY(_lock) for writes; read unlocked as a first, cheap check
        self._lock = threading.Lock()
        self._thread = threading.local()  # .kept: this thread's state is (each thread its own)

    def keep(self) -> None:
        """Keep the calling thread's state (which holds the GIL) until the thread ends."""
        if self.held >= self.limit or getattr(self._thread, "kept", False):
            return
        with self._lock:
            if self.held >= self.limit:
                return
            self.held += 1
        ctypes.pythonapi.PyGILState_Ensure()  # the GIL is ours already: one more user of the state
        self._thread.kept = True


# Errnos that are answers, not trouble: logged at debug level only.
QUIET = frozenset({errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTSUP})


def fuse_operation(fn: F) -> F:
    """Run a FUSE method so that any failure becomes a FuseOSError and one log line."""

    @functools.wraps(fn)
    def guarded(self: Any, path: str, *args: Any) -> Any:
        try:
            return fn(self, path, *args)
        except Exception as exc:
            err = _fuse_error(fn.__name__, path, exc)
            if err is exc:
                raise
            raise err from exc

    return guarded  # type: ignore[return-value]


def fuse_entries(operation: str, path: str, entries: Iterator[T]) -> Iterator[T]:
    """``entries`` as a FUSE call hands them out bit by bit (a streamed ``readdir``): a failure
    on the way is a FuseOSError and one log line, as in :func:`fuse_operation`."""
    try:
        yield from entries
    except Exception as exc:
        err = _fuse_error(operation, path, exc)
        if err is exc:
            raise
        raise err from exc


def _fuse_error(operation: str, path: str, exc: Exception) -> FuseOSError:
    """The FuseOSError for ``exc``, logged once."""
    if isinstance(exc, FuseOSError):
        if exc.errno not in QUIET:
            log.info("%s %s: %s", operation, path, errno.errorcode.get(exc.errno, exc.errno))
        return exc
    err = errno_for(exc, operation)
    if isinstance(exc, (RemoteStoreError, FsError, OSError)):
        # In an outage, the retry policy's Outage logged S3's loss once: not each call it fails.
        quiet = err in QUIET or isinstance(exc, Stale) or getattr(exc, "in_outage", False)
        level = logging.DEBUG if quiet else logging.WARNING
        log.log(level, "%s %s: %s (%s)", operation, path, errno.errorcode.get(err, err), exc)
    else:
        log.exception("%s %s: unexpected error, returning EIO", operation, path)
    return FuseOSError(err)
