"""Directories mkdir made, their objects (or their holder only) PUT in the background.

By default (``-o exclusive_mkdir``, where the server honours ``If-None-Match: *``) mkdir PUTs a
new directory's marker itself, conditional, before it returns, so that ``mkdir lock`` is a
lock across mounts (:meth:`Namespace.claim_dir`, round 38); only its ``dir_$folder$`` holder,
where the server needs one, is recorded here (``marked``) and PUT by the thread. Otherwise
(``exclusive_mkdir=off``) mkdir returns once the directory is recorded, as below.

A new directory's objects (its ``dir/`` marker and, where the server drops metadata on
keys ending in '/', its ``dir_$folder$`` holder, which carries its mode) were PUT side by
side before ``mkdir`` returned: one round trip in each mkdir of ``cp -r``, where a local
disk's mkdir is durable only once its parent is fsync'd (bench/README.md, round 35). Here
:meth:`NewDirectories.add` records the directory in ``newdirs.journal`` in the cache
directory (the format of :mod:`s3fs_mount.fs.journal`) and returns; a background thread
PUTs its objects, a directory after the directories above it.

What must not see a directory before its objects are in S3 waits for them
(:meth:`NewDirectories.settle` and kin), as a key's pending delete is settled before the
key is written again (fs/deletes.py):

* a file's upload, a symlink, a node, a rename into it: **no key is put under a directory
  whose mode is not in S3 yet**, so another client never sees a file in a directory that
  shows no mode (nor, after a crash, one whose mode is lost);
* rmdir, rename, chmod of it and the writing of its times (built on what S3 holds);
* a lookup or listing that asks S3 about it or its parent (a listing taken before it is
  in S3 would say it is not there);
* fsync of a directory (what is under it), and unmount.

While S3 refuses (the mount's write probe, or the last PUT, failed) mkdir PUTs before it
returns instead, so that it says S3's error itself (EACCES for read-only keys). A PUT that
fails is logged, kept, retried by the thread after :data:`RETRY_PAUSE` s and by
whatever settles the directory, which then fails (fsync with the error's errno, EIO or
EACCES; the close of a file in it EIO, the file staying staged): never dropped. A mount
killed meanwhile PUTs the directories still recorded at its next start, before it uploads
the files staged in them (:meth:`NewDirectories.recover`).
As for unlinks (fs/deletes.py), the record is not fsync'd per mkdir: a ``kill -9`` loses
nothing the kernel was handed, and fsync of the parent directory makes it durable in S3.

Locks: ``_cond`` guards ``_pending``, ``_thread`` and ``_closed``; the
journal has its own lock, taken alone; neither is held during a request, nor taken while
the namespace's lock is held.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from s3fs_mount.fs.errors import FsError, errno_for
from s3fs_mount.fs.journal import OwedJournal
from s3fs_mount.fs.paths import KeyMap

log = logging.getLogger(__name__)

JOURNAL_NAME = "newdirs.journal"
#: Seconds before the background thread tries a directory whose PUT failed again.
RETRY_PAUSE = 5.0

#: Puts directory ``path``'s objects with ``metadata`` (its holder only, if the third argument
#: says its marker is in S3 already: an exclusive mkdir's); returns the ETag to remember it by.
Send = Callable[[str, dict[str, str], bool], str]
#: Told that directory ``path``'s objects are in S3, with that ETag.
Sent = Callable[[str, str], None]

QUEUED, SENDING, FAILED = "queued", "sending", "failed"


@dataclasses.dataclass
class _NewDir:
    metadata: dict[str, str]
    #: Its marker is in S3 already (mkdir claimed the name, fs/mutations.py): its holder is owed.
    marked: bool = False
    state: str = QUEUED
    failed_at: float = 0.0
    error: str = ""


class NewDirectories:
    """Directory path -> its objects to PUT, in mkdir order, until S3 has them. Thread-safe.

    :param directory: the cache directory the journal lives in (None: kept in memory only).
    :param send: PUTs a directory's objects (the namespace's ``write_dir(path, meta, new=True)``).
    :param sent: told once they are in S3, before anything waiting for them goes on.

    The thread sends one directory at a time, itself (a pool's hand-over cost more than the
    side-by-side sends saved: ``cp -r`` makes a directory, then fills it).

    Usage::

        dirs = NewDirectories(cache_root, send, sent)
        dirs.recover()               # what a killed run left: PUT now (parents first)
        dirs.add("/a", metadata)     # mkdir: recorded, returns at once
        dirs.settle("/a/f")          # before a key goes under /a: /a and what is above it are in S3
        dirs.settle_under("/a")      # rmdir, rename, fsync of /a
        dirs.withdraw("/a")          # rmdir of /a before its PUTs left: none is sent
        dirs.put_back("/a", metadata)  # rmdir of /a found another client's key in it: PUT again
        dirs.close()                 # unmount: everything sent, or kept for the next mount
    """

    def __init__(self, directory: str | None, send: Send, sent: Sent) -> None:
        self._records = OwedJournal(directory, JOURNAL_NAME)
        self._send = send  # immutable after __init__
        self._sent = sent  # immutable after __init__
        self._cond = threading.Condition()
        self._pending: dict[str, _NewDir] = {}  # GUARDED_BY(_cond): in mkdir order
        self._closed = False  # GUARDED_BY(_cond)
        self._thread: threading.Thread | None = None  # GUARDED_BY(_cond)
        #: S3 refused the last directory PUT (or the mount's write probe): mkdir PUTs before it
        #: returns, so that it says S3's error itself, until a PUT goes through again.
        self.refusing = False  # GUARDED_BY(_cond)

    # -- what the filesystem calls ---------------------------------------------------------

    def recover(self) -> int:
        """At mount: PUT the directories a previous run recorded and did not send (parents
        first); those that fail stay pending, retried in the background. Returns how many."""
        left = self._records.recover()
        if not left:
            return 0
        log.info("recovery: %d new directories a previous run did not put in S3 yet", len(left))
        with self._cond:
            for path in sorted(left):
                self._pending[path] = _NewDir(dict(left[path]["meta"]), bool(left[path].get("marked")))
        try:
            self.settle_under("/")
        except FsError:
            with self._cond:
                self._start()
        return len(left)

    def add(self, path: str, metadata: dict[str, str], marked: bool = False) -> None:
        """mkdir of ``path`` with ``metadata``: recorded now, its objects PUT soon (``marked``:
        its marker is in S3 already, its holder only is owed). While S3 refuses
        (:attr:`refusing`), PUT now: FsError (S3's errno, EACCES for read-only keys) if it still
        does, and nothing is recorded."""
        with self._cond:
            refusing = self.refusing and not marked  # (S3 just took the marker)
        if refusing:
            self.settle(KeyMap.split(path)[0])
            try:
                self._sent(path, self._send(path, metadata, False))
            except Exception as exc:  # noqa: BLE001 - whatever S3 or the network said, as errno
                raise FsError(errno_for(exc), "directory %s is not in S3: %s" % (path, exc)) from exc
            with self._cond:
                self.refusing = False
            return
        self._records.record(path, {"meta": metadata, "marked": True} if marked else {"meta": metadata})
        with self._cond:
            self._pending[path] = _NewDir(dict(metadata), marked)
            self._start()
            self._cond.notify_all()

    def expect_refusals(self) -> None:
        """S3 refused the mount's write probe (read-only keys): mkdir PUTs before it returns."""
        with self._cond:
            self.refusing = True

    def settle(self, path: str) -> None:
        """Before anything of ``path`` goes to S3 (a file's upload, a change of a directory):
        ``path`` and the directories above it are in S3 when this returns (FsError if not)."""
        if self._pending:  # (no lock: nothing owed, the common case, costs nothing)
            self._settle(lambda p: p == path or _above(p, path))

    def settle_marked(self, path: str) -> None:
        """Before an exclusive mkdir's marker goes under ``path``: ``path`` and the directories
        above it have their markers in S3 when this returns (those whose holder only is owed
        are not waited for: the thread PUTs a directory's holder before its subdirectories'),
        so that a ``cp -r`` mkdir waits for one round trip, not two."""
        if self._pending:
            self._settle(lambda p: (p == path or _above(p, path)) and not self._pending[p].marked)

    def settle_in(self, directory: str) -> None:
        """Before S3 is asked about ``directory`` or lists it: it, what is above it and its new
        subdirectories are in S3 when this returns (FsError if not)."""
        if self._pending:
            self._settle(lambda p: p == directory or _above(p, directory) or KeyMap.split(p)[0] == directory)

    def settle_under(self, path: str) -> None:
        """rmdir, rename, fsync of ``path``: it, what is above it and everything under it are in
        S3 when this returns (FsError if not)."""
        if self._pending:
            self._settle(lambda p: p == path or _above(p, path) or _above(path, p))

    def withdraw(self, path: str) -> bool:
        """rmdir of ``path`` while none of its objects has left yet (queued, nothing pending
        under it): its record goes, and nothing of it is sent (a PUT of each object, then a
        delete of each, for a directory S3 never needed). False if its PUTs are under way,
        failed (one may have landed), its marker is in S3 (an exclusive mkdir's) or it has
        subdirectories pending: the caller settles it."""
        with self._cond:
            entry = self._pending.get(path)
            if entry is None or entry.state != QUEUED or entry.marked:
                return False
            if any(_above(path, p) for p in self._pending if p != path):
                return False
            del self._pending[path]
            self._cond.notify_all()
        self._records.record(path, None)
        return True

    def put_back(self, path: str, metadata: dict[str, str]) -> None:
        """rmdir of ``path`` deleted (or withdrew) its objects and then found another client's
        key in it: they are PUT again with ``metadata``, recorded first, as a mkdir's are, so
        that a PUT that fails stays owed (retried in the background, settled by what needs it,
        PUT by the next mount after a ``kill -9``) rather than the directory's mode being lost
        while a file stays in it. Sent now, after what is pending above it; FsError (errno_for
        the error) if it fails."""
        self._records.record(path, {"meta": metadata})
        with self._cond:
            self._pending[path] = _NewDir(dict(metadata))
            self._start()
            self._cond.notify_all()
        self.settle(path)

    def waiting(self) -> list[dict[str, str]]:
        """For ``s3fs-mount status``: each directory whose objects are not in S3 yet, in mkdir
        order, with its state (queued, sending, failed) and the last error."""
        with self._cond:
            return [{"path": p, "state": d.state, "error": d.error} for p, d in self._pending.items()]

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """At unmount: stop the thread and PUT what is pending; what fails stays recorded (and
        logged) for the next mount."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join()  # after the send it has under way
        try:
            self.settle_under("/")
        except FsError as exc:
            log.error("unmount: %s", exc)
        left = len(self)
        if self._records.close(left):
            log.error("%d new directories not put in S3: they are put at the next mount", left)

    # -- sending ---------------------------------------------------------------------------

    def _settle(self, wanted: Callable[[str], bool]) -> None:
        """PUT (here) or wait for every pending directory ``wanted`` says, parents first.
        ``wanted`` takes the directories above any it takes. FsError (errno_for the first error)
        if one fails."""
        while True:
            with self._cond:
                mine = [p for p in self._pending if wanted(p)]
                if not mine:
                    return
                ready = [p for p in mine if self._pending[p].state != SENDING and not self._below_pending(p)]
                if not ready:
                    self._cond.wait()
                    continue
                for path in ready:
                    self._pending[path].state = SENDING
            outcomes = [self._try_put(path) for path in ready]
            errors = [(path, exc) for path, exc in zip(ready, outcomes, strict=True) if exc is not None]
            if errors:
                path, exc = errors[0]
                raise FsError(errno_for(exc), "directory %s is not in S3: %s" % (path, exc)) from exc

    def _try_put(self, path: str) -> Exception | None:
        """:meth:`_put`; the error, if it failed (logged there)."""
        try:
            self._put(path)
        except Exception as exc:  # noqa: BLE001 - each is tried; the caller raises the first
            return exc
        return None

    def _put(self, path: str) -> None:
        """PUT ``path``'s objects (taken: SENDING); on failure it is FAILED, and it raises."""
        with self._cond:
            meta, marked = self._pending[path].metadata, self._pending[path].marked
        try:
            etag = self._send(path, meta, marked)
            self._sent(path, etag)
            self._records.record(path, None)
        except BaseException as exc:
            log.error("mkdir %s: its directory objects could not be put in S3 (%s): kept, tried "
                      "again (fsync or unmount says EIO if they never are)", path, exc)
            with self._cond:
                entry = self._pending[path]
                entry.state, entry.failed_at, entry.error = FAILED, time.monotonic(), str(exc)
                self.refusing = True
                self._cond.notify_all()
            raise
        with self._cond:
            del self._pending[path]
            self.refusing = False
            self._cond.notify_all()

    def _below_pending(self, path: str) -> bool:
        """Whether a directory above ``path`` is pending still (caller holds ``_cond``)."""
        up = KeyMap.split(path)[0]
        while up != "/":
            if up in self._pending:
                return True
            up = KeyMap.split(up)[0]
        return False

    def _start(self) -> None:
        """The background thread runs once there is something to send (caller holds ``_cond``)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="newdirs", daemon=True)
            self._thread.start()

    def _next(self, now: float) -> str | None:
        """What the thread sends next (caller holds ``_cond``): the oldest directory queued, or
        failed a pause ago, with nothing pending above it."""
        for p, d in self._pending.items():
            if (d.state == QUEUED or (d.state == FAILED and now - d.failed_at >= RETRY_PAUSE)) and (
                not self._below_pending(p)
            ):
                return p
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    path = self._next(time.monotonic())
                    if path is not None:
                        break
                    failed = any(d.state == FAILED for d in self._pending.values())
                    self._cond.wait(RETRY_PAUSE if failed else None)
                self._pending[path].state = SENDING
            self._try_put(path)  # a failure is logged there, and tried again after a pause


def _above(upper: str, path: str) -> bool:
    """Whether directory ``upper`` holds ``path`` (at any depth)."""
    return upper == "/" or path.startswith(upper.rstrip("/") + "/")
