"""Server-side copies in parts under way, recorded until they end, so a killed mount's are aborted.

An object over 5 GiB is copied in parts (UploadPartCopy, then a completion:
:meth:`s3fs_mount.s3.store.RemoteStore.copy_object`): a metadata change's
self-copy, a directory rename's copies, an upload's self-copy (metadata merged
at its complete, times set while it went up) and its copy of another client's
version to a conflict name (fs/upload.py, whose journal this is). A mount killed in between left the
multipart upload behind, listed and billed, with nothing to say whose it was.
Each is recorded in ``copies.journal`` in the cache directory (the format of
:mod:`s3fs_mount.fs.journal`) once it has an id, and taken back when the copy
ends (completed, or failed and aborted); the next mount aborts what it finds
there (:meth:`s3fs_mount.fs.mutations.Mutations.recover`). A file rename's copy
is recorded with the rename instead (fs/renames.py), which also finishes it.

A record's id is the upload id; its state ``{"key": destination key}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from s3fs_mount.fs.journal import OwedJournal
from s3fs_mount.s3.store import MultipartUpload

log = logging.getLogger(__name__)

JOURNAL_NAME = "copies.journal"

T = TypeVar("T")
#: What RemoteStore.copy_object calls as a copy in parts begins (False) and before it completes (True).
OnParts = Callable[[MultipartUpload, bool], None]


class PendingCopies:
    """Upload id -> the key a copy in parts under way writes. Thread-safe.

    :param directory: the cache directory the journal lives in (None: kept nowhere).

    Usage::

        copies = PendingCopies(cache_root)
        copies.recover(store.abort_multipart)        # aborts what a killed run left; how many
        etag = copies.run("big", lambda on_parts: store.copy_object("big", "big", ..., on_parts=on_parts))
        copies.close()

    Locks: ``_lock`` guards ``_pending``; the journal has its own lock, taken inside it;
    neither is held during a request.
    """

    def __init__(self, directory: str | None) -> None:
        self._records = OwedJournal(directory, JOURNAL_NAME)
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # GUARDED_BY(_lock): upload ids recorded, not taken back

    def run(self, key: str, copy: Callable[[OnParts], T]) -> T:
        """``copy(on_parts)``, a copy to ``key``: the upload of a copy in parts is recorded from
        its start to its end (completed, or aborted by the store on a failure)."""
        began: list[str] = []

        def on_parts(mpu: MultipartUpload, copied: bool) -> None:
            if copied:
                return
            self._records.record(mpu.upload_id, {"key": key})
            with self._lock:
                self._pending.add(mpu.upload_id)
            began.append(mpu.upload_id)

        try:
            return copy(on_parts)
        finally:
            for upload_id in began:
                with self._lock:
                    self._pending.discard(upload_id)
                self._records.record(upload_id, None)

    def recover(self, abort: Callable[[str, str], bool]) -> int:
        """Abort (``abort(key, upload_id)``) the copies a previous run left; how many were."""
        aborted = 0
        for upload_id, state in sorted(self._records.recover().items()):
            key = str(state.get("key", "")) if isinstance(state, dict) else ""
            if abort(key, upload_id):
                log.warning("recovery: aborted the copy in parts to %s a killed run left", key)
                self._records.record(upload_id, None)
                aborted += 1
            else:
                with self._lock:
                    self._pending.add(upload_id)  # S3 did not answer: the next mount tries again
        return aborted

    def close(self) -> None:
        """At unmount: a journal that owes nothing goes; one that does stays for the next mount."""
        with self._lock:
            left = len(self._pending)
        if self._records.close(left):
            log.error("%d copies in parts not aborted: they are aborted at the next mount", left)
