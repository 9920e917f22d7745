"""Renames under way, recorded until they are done, so a killed mount finishes them.

A file's rename, where the server has no RenameObject (AWS's general purpose
buckets), is a copy, then a delete of the old key; a directory's rename moves
or copies every key under it, then deletes what is left of the old ones. A
mount killed in between left the file under both names, or the directory half
under each, with nothing to say which was meant. Each is recorded in
``renames.journal`` in the cache directory (the format of
:mod:`s3fs_mount.fs.journal`) before its first request and taken back once it
is done; the next mount finishes what it finds there
(:meth:`s3fs_mount.fs.mutations.Mutations.recover`).

A record's id is the old key (a directory's: its prefix, ending in ``/``);
its state ``{"new": key, "etag": ..., "copied": ...}`` for a file (the ETag of
the version moved, then that of the copy once it is made; a copy in parts, of a
file over 5 GiB, adds ``"upload"``, its multipart upload's id, once begun, and
``"copied"`` before its completion is sent: the ETag it makes), ``{"new":
prefix}`` for a directory. A file's RenameObject (the server moves it, its metadata as it
was) records ``{"new": key, "etag": ..., "moved": "1", "ctime": ...}``: the self-copy
that stores its new ctime is owed until it lands. One S3 refused (a 500 after the retry
policy's attempts, S3 unreachable) stays recorded and is tried again by a background thread
every :data:`RETRY_PAUSE` s (:meth:`PendingRenames.retry_later`), and by the next mount if
this one ends first: the rename itself stands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from s3fs_mount.fs.journal import OwedJournal

log = logging.getLogger(__name__)

JOURNAL_NAME = "renames.journal"
#: Seconds before the background thread tries again what a rename still owes (its ctime).
RETRY_PAUSE = 5.0

#: Finishes what the rename of the old key (first argument) still owes, as its state (second)
#: records it; returns normally once nothing is owed, raises if S3 would not take it.
Finish = Callable[[str, dict[str, Any]], object]


class PendingRenames:
    """Old key -> the rename of it under way. Thread-safe.

    :param directory: the cache directory the journal lives in (None: kept nowhere).
    :param finish: what :meth:`retry_later`'s thread calls to finish a rename (None: no retries).
    :param retry_pause: seconds between its tries of one rename (None: :data:`RETRY_PAUSE`).

    Usage::

        renames = PendingRenames(cache_root)
        left = renames.recover()                    # old key -> state, as a killed run left them
        renames.begin("a", {"new": "b", "etag": e})  # before the first request
        renames.begin("a", {..., "copied": e2})      # a step done
        renames.done("a")                            # the old key is gone, or the rename failed
        renames.retry_later("a")                     # or: S3 refused its last step; kept, tried again
        renames.close()

    Locks: ``_cond`` guards ``_pending``, ``_retries``, ``_thread`` and ``_closed``, and is
    held while a record is written (a retry's "done" and a new rename of the name go to the
    journal in the order they change ``_pending``); the journal has its own lock, taken inside
    it; neither is held during a request.
    """

    def __init__(
        self, directory: str | None, finish: Finish | None = None, retry_pause: float | None = None
    ) -> None:
        self._records = OwedJournal(directory, JOURNAL_NAME)
        self._recording = directory is not None  # fixed: whether renames are recorded at all
        self._finish = finish  # immutable after __init__
        self._retry_pause = RETRY_PAUSE if retry_pause is None else retry_pause  # immutable after __init__
        self._cond = threading.Condition()
        #: Old key -> the state last recorded for it (a retry finishes only the state it took).
        self._pending: dict[str, dict[str, Any]] = {}  # GUARDED_BY(_cond)
        #: Old key -> time.monotonic() at which the thread tries it again.
        self._retries: dict[str, float] = {}  # GUARDED_BY(_cond)
        self._thread: threading.Thread | None = None  # GUARDED_BY(_cond)
        self._closed = False  # GUARDED_BY(_cond)

    def recover(self) -> dict[str, dict[str, Any]]:
        """What a previous run recorded and did not finish (still recorded until :meth:`done`)."""
        left = self._records.recover()
        if not left:
            return {}
        with self._cond:
            self._pending.update(left)
        log.info("recovery: %d renames a previous run left unfinished", len(left))
        return left

    def begin(self, old: str, state: dict[str, Any]) -> None:
        """The rename of ``old`` is under way (or has gone a step further): recorded now."""
        if not self._recording:
            return
        with self._cond:
            if self._retries.pop(old, None) is not None:
                # A new rename of that name: the ctime the earlier one owed (to the file it moved
                # away) goes with its record.
                log.warning("rename of %s again: the ctime its last rename owed %s is not stored",
                            old, self._pending[old].get("new"))
            self._pending[old] = state
            self._records.record(old, state)  # (under _cond: in the order of _pending's changes)

    def done(self, old: str, state: dict[str, Any] | None = None) -> None:
        """The rename of ``old`` is done (or failed, and left nothing to finish); with ``state``,
        only if that is still what is recorded for it (not a later rename of the name)."""
        with self._cond:
            if old not in self._pending or (state is not None and self._pending[old] is not state):
                return
            del self._pending[old]
            self._retries.pop(old, None)
            self._records.record(old, None)

    def retry_later(self, old: str) -> None:
        """The last step of the rename of ``old`` failed (S3 refused it): its record stays, and
        the background thread tries it again (``finish``) until it is done; then taken back."""
        with self._cond:
            if old not in self._pending or self._finish is None or self._closed:
                return  # (kept: the next mount finishes it)
            self._retries[old] = time.monotonic() + self._retry_pause
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="renames", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def retrying(self) -> int:
        """How many renames the background thread is to try again."""
        with self._cond:
            return len(self._retries)

    def close(self) -> None:
        """At unmount: a journal that owes nothing goes; one that does stays for the next mount."""
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            left = len(self._pending)
        if self._records.close(left):
            log.error("%d renames not finished: they are finished at the next mount", left)

    def _run(self) -> None:
        """The background thread: each rename due is tried again (outside the lock)."""
        while True:
            with self._cond:
                old = self._next_due()
                if old is None:
                    return
                state = self._pending[old]
            assert self._finish is not None  # (retry_later starts no thread without it)
            try:
                self._finish(old, state)
            except Exception as exc:  # noqa: BLE001 - kept, tried again after the pause
                log.warning("rename of %s to %s: still not finished (%s); tried again in %.0f s",
                            old, state.get("new"), exc, self._retry_pause)
                with self._cond:
                    if self._pending.get(old) is state and not self._closed:
                        self._retries[old] = time.monotonic() + self._retry_pause
                continue
            self.done(old, state)

    def _next_due(self) -> str | None:
        """The next rename due for a try, taken off the retries once its time has come (waits
        for it); None once closed. Caller holds ``_cond``."""
        while not self._closed:
            if not self._retries:
                self._cond.wait()
                continue
            old = min(self._retries, key=self._retries.__getitem__)
            wait = self._retries[old] - time.monotonic()
            if wait <= 0:
                del self._retries[old]
                return old
            self._cond.wait(wait)
        return None
