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
prefix}`` for a directory.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from s3fs_mount.fs.journal import OwedJournal

log = logging.getLogger(__name__)

JOURNAL_NAME = "renames.journal"


class PendingRenames:
    """Old key -> the rename of it under way. Thread-safe.

    :param directory: the cache directory the journal lives in (None: kept nowhere).

    Usage::

        renames = PendingRenames(cache_root)
        left = renames.recover()                    # old key -> state, as a killed run left them
        renames.begin("a", {"new": "b", "etag": e})  # before the first request
        renames.begin("a", {..., "copied": e2})      # a step done
        renames.done("a")                            # the old key is gone, or the rename failed
        renames.close()

    Locks: ``_lock`` guards ``_pending``; the journal has its own lock, taken inside it;
    neither is held during a request.
    """

    def __init__(self, directory: str | None) -> None:
        self._records = OwedJournal(directory, JOURNAL_NAME)
        self._recording = directory is not None  # fixed: whether renames are recorded at all
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # GUARDED_BY(_lock)

    def recover(self) -> dict[str, dict[str, Any]]:
        """What a previous run recorded and did not finish (still recorded until :meth:`done`)."""
        left = self._records.recover()
        if not left:
            return {}
        with self._lock:
            self._pending.update(left)
        log.info("recovery: %d renames a previous run left unfinished", len(left))
        return left

    def begin(self, old: str, state: dict[str, Any]) -> None:
        """The rename of ``old`` is under way (or has gone a step further): recorded now."""
        if not self._recording:
            return
        self._records.record(old, state)
        with self._lock:
            self._pending.add(old)

    def done(self, old: str) -> None:
        """The rename of ``old`` is done (or failed, and left nothing to finish)."""
        with self._lock:
            if old not in self._pending:
                return
            self._pending.discard(old)
        self._records.record(old, None)

    def close(self) -> None:
        """At unmount: a journal that owes nothing goes; one that does stays for the next mount."""
        with self._lock:
            left = len(self._pending)
        if self._records.close(left):
            log.error("%d renames not finished: they are finished at the next mount", left)
