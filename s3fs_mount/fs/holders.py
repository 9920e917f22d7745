"""Directory holders not yet written (``-o writeback``), recorded until they are.

Where the server drops metadata on ``dir/`` markers (SeaweedFS), a directory's
mode, owner and times live on a ``dir_$folder$`` object, its holder. In the
default mode ``mkdir`` PUTs the marker and the holder side by side and returns
once both are in S3. With ``-o writeback`` (whose closes return before the
upload too) ``mkdir`` PUTs the marker only, so the directory exists in S3 when
it returns, and leaves the holder to the directory-times writer
(:mod:`.dirtimes`), which writes it once with the times the directory's first
entries gave it: one PUT of the holder, not two, and one request in ``mkdir``'s
wait, not two (``cp -r`` of a tree with ``-o writeback`` spent half its loop in
``mkdir``: bench/README.md).

Until it is written the metadata is kept here, and recorded in
``holders.journal`` in the cache directory (the format of
:mod:`s3fs_mount.fs.journal`) before ``mkdir`` sends its marker, so a mount
killed meanwhile writes the holder when it starts again.
"""

from __future__ import annotations

import logging
import threading

from s3fs_mount.fs.journal import OwedJournal

log = logging.getLogger(__name__)

JOURNAL_NAME = "holders.journal"


class PendingHolders:
    """Directory path -> the metadata its holder is to carry, until written. Thread-safe.

    :param directory: the cache directory the journal lives in (None: kept in memory only).

    Usage::

        holders = PendingHolders(cache_root)
        left = holders.recover()          # path -> metadata a killed run did not write
        holders.add("/d", metadata)        # recorded before the marker is PUT
        holders.get("/d")                  # what lookups show until it is written
        holders.done("/d")                 # written (or the directory is gone)
        holders.close()

    Locks: ``_lock`` guards ``_pending``; the journal has its own lock, taken inside it;
    neither is held during a request, nor taken while the namespace's lock is held.
    """

    def __init__(self, directory: str | None) -> None:
        self._records = OwedJournal(directory, JOURNAL_NAME)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, str]] = {}  # GUARDED_BY(_lock)

    def recover(self) -> dict[str, dict[str, str]]:
        """What a previous run recorded and did not write: pending again, returned."""
        left = self._records.recover()
        if not left:
            return {}
        with self._lock:
            for path, state in left.items():
                self._pending[path] = dict(state["meta"])
        log.info("recovery: %d directory holders a previous run left unwritten", len(left))
        return {path: dict(state["meta"]) for path, state in left.items()}

    def add(self, path: str, metadata: dict[str, str]) -> None:
        """Directory ``path`` is to get a holder carrying ``metadata``: recorded now."""
        self._records.record(path, {"meta": metadata})
        with self._lock:
            self._pending[path] = dict(metadata)

    def get(self, path: str) -> dict[str, str] | None:
        """The metadata of ``path``'s holder while it is pending, else None."""
        with self._lock:
            meta = self._pending.get(path)
            return None if meta is None else dict(meta)

    def under(self, path: str) -> list[str]:
        """The pending directories ``path`` is or holds."""
        inner = path.rstrip("/") + "/"
        with self._lock:
            return [p for p in self._pending if p == path or p.startswith(inner)]

    def done(self, path: str) -> None:
        """``path``'s holder is written, or the directory is gone: nothing owed any more."""
        with self._lock:
            if self._pending.pop(path, None) is None:
                return
        self._records.record(path, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """At unmount: what is still pending stays recorded for the next mount; a journal that
        owes nothing goes (a cache dir holds no file for what is not owed)."""
        with self._lock:
            left = len(self._pending)
        if self._records.close(left):
            log.error("%d directory holders not written: they are written at the next mount", left)
