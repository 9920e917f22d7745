"""Deletes sent in batches: an unlink records its key and returns; DeleteObjects follows.

An unlink of a file costs S3 one DELETE, and Python's HTTP stack about
0.5 ms of CPU per request: ``rm -rf`` of 1,000 files was 1,000 round trips
in a row. Here :meth:`DeleteQueue.add` records the key and returns; a
background thread sends what has gathered (after :data:`WINDOW` seconds,
or at once when :data:`BATCH` keys wait) in DeleteObjects, **up to
:data:`PARALLEL` side by side, each a share of what waits**
(:func:`shares`: a quarter each, at least :data:`MIN_BATCH` keys, at
most :data:`BATCH`), so the server deletes while ``rm`` goes on unlinking and
its keys are not held behind one request. SeaweedFS deletes a
DeleteObjects' keys one after the other, each a round trip to its filer
(two with the ETag this queue names): idle, round 31's batches side by side
had ``rm -rf`` of 1,000 files done in 0.39 s where round 32's one batch
under way at a time (the keys that came meanwhile whole in the next) took
0.75 s (bench/README.md, round 37, lead). The price is on a loaded machine,
where SeaweedFS takes several times as long for batches side by side as in
turn (4 x 250 keys 3.7 s, 1 x 1,000 0.8 s at load 13-27; round 38 helper
1, which also tried and did not keep a rule that measures which holds).
Many keys waiting (4,000 or more) go in full batches of 1,000. The namespace
hides a name whose delete is pending (see
:meth:`Namespace.deleting <s3fs_mount.fs.namespace.Namespace.deleting>`).

Crash safety: each key is recorded in ``deletes.journal`` in the cache
directory (the format of :mod:`s3fs_mount.fs.journal`) before the unlink
returns, and cleared once S3 has answered for it; a mount killed in
between sends the keys at its next start (:meth:`DeleteQueue.recover`).
The record is not fsync'd per unlink: as on a local filesystem, an unlink
is durable once its directory is fsync'd, which sends that directory's
pending deletes (:meth:`DeleteQueue.flush`).

Order: a delete still pending when its key is written again (create,
rename onto it, symlink) is sent first (:meth:`DeleteQueue.settle`), so a
batch never removes the new object. A delete added with the ETag of the
version the unlink saw removes that version only (the ``ETag`` of
DeleteObjects): a version another client put meanwhile, sent a moment
later (:data:`WINDOW`, and the batch under way before it), or just before
the unlink, stays, and the name shows again (``PreconditionFailed``, one
log line), never removed unseen.

A key S3 refuses for good (``AccessDenied`` on read-only keys) shows again, and the next
``fsync`` of a directory above it says so (:meth:`DeleteQueue.refused`): as a local filesystem's
fsync reports a write-back error, once.

Locks: ``_cond`` guards ``_pending``, ``_etags``, ``_sending``, ``_since``, ``_batches``,
``_refused``, ``_opened``, ``_thread`` and ``_closed``; the journal has its own lock, taken inside
``_cond`` or alone (never the other way round).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from s3fs_mount.fs.journal import StagingJournal
from s3fs_mount.s3.bucket import Bucket

log = logging.getLogger(__name__)

JOURNAL_NAME = "deletes.journal"
#: Seconds the first pending key waits for others to join its batch.
WINDOW = 0.05
#: Keys per DeleteObjects (S3's most).
BATCH = 1000
#: Batches under way at once (the background's; a flush's go beside them).
PARALLEL = 4
#: The fewest keys in a batch cut from more (fewer go whole, in one).
MIN_BATCH = 50
#: Refused keys kept for the next fsync of their directory to report (the first ones, if more).
REFUSALS_KEPT = 1000
#: Seconds before a batch whose request failed (after the retry policy's attempts) is sent again.
RETRY_PAUSE = 5.0

#: Told of each answered batch: the keys deleted and ``[(key, error code)]`` of those that stay.
Answered = Callable[[list[str], list[tuple[str, str]]], None]


def shares(waiting: list[str]) -> list[list[str]]:
    """``waiting`` cut evenly into batches to go side by side (the server deletes one batch's
    keys one by one): :data:`PARALLEL` of them, fewer so that each has :data:`MIN_BATCH` keys or
    more, more so that none has over :data:`BATCH`."""
    if not waiting:
        return []
    count = max(1, -(-len(waiting) // BATCH), min(PARALLEL, len(waiting) // MIN_BATCH))
    size = -(-len(waiting) // count)
    return [waiting[start : start + size] for start in range(0, len(waiting), size)]


class DeleteQueue:
    """Deletes of one mount's bucket, recorded in ``directory`` and sent in batches.

    :param store: the mounted bucket.
    :param directory: the mount's cache directory (under the staging cache's lock).
    :param answered: told of each batch S3 answered (in the thread that sent it, before the
        batch's keys count as sent: a :meth:`settle` or :meth:`flush` sees its effects).
    :param window: seconds a batch gathers keys before it is sent.

    Usage::

        deletes = DeleteQueue(bucket, cache_dir, answered)
        left = deletes.recover()   # keys a killed run left: sent now
        deletes.add("a/b")          # returns at once; sent within ``window`` seconds
        deletes.settle("a/b")       # before writing "a/b" again: its delete is done
        deletes.flush("a/")         # every pending delete under "a/" is done
        deletes.close()             # at unmount: the rest sent; returns what could not be
    """

    def __init__(self, store: Bucket, directory: str, answered: Answered, window: float = WINDOW) -> None:
        self.store = store
        self.window = window
        self.answered = answered
        self._journal = StagingJournal(directory, name=JOURNAL_NAME)
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}  # keys to send, in the order of their unlinks
        self._etags: dict[str, str] = {}  # of keys pending or under way: the version to delete
        self._sending: set[str] = set()  # keys of batches under way
        self._since = 0.0  # time.monotonic() when the oldest pending key came
        self._batches = 0  # background batches under way
        self._refused: dict[str, str] = {}  # key -> S3's code: refused, not yet told by an fsync
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(PARALLEL, thread_name_prefix="deletes")
        #: What a previous run did not send. The journal is made at the first delete (a cache
        #: dir holds no file for what a mount never did).
        left = StagingJournal.read(self._journal.path)
        self._left = list(left)
        self._etags.update({k: r["etag"] for k, r in left.items() if isinstance(r, dict) and r.get("etag")})
        self._opened = False
        if self._left:
            self._open_journal()

    # -- what the filesystem calls -----------------------------------------------------

    def owed_by_previous_run(self) -> int:
        """How many deletes a previous run recorded and did not finish (:meth:`recover` sends them)."""
        return len(self._left)

    def recover(self) -> list[str]:
        """Send the deletes a previous run recorded and did not finish; returns the keys that
        could not be sent yet: they stay pending (and recorded), retried in the background."""
        keys, self._left = self._left, []
        if not keys:
            return []
        log.info("recovery: sending %d deletes a previous run left pending", len(keys))
        with self._cond:
            for key in keys:
                self._pending[key] = None
            self._since = time.monotonic()
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - kept pending: the background thread retries
            log.error(
                "recovery: %d deletes could not be sent yet (%s); retried in the background", len(keys), exc
            )
            with self._cond:
                self._start()
        with self._cond:
            return [k for k in keys if k in self._pending or k in self._sending]

    def add(self, key: str, etag: str | None = None) -> None:
        """Delete ``key`` soon: recorded now, sent in the next batch; with ``etag``, only that
        version of it (another client's newer one stays: S3 answers ``PreconditionFailed``)."""
        if not self._opened:
            self._open_journal()
        self._journal.record(key, {"key": key, "etag": etag} if etag else {"key": key})
        with self._cond:
            if not self._pending:
                self._since = time.monotonic()
            self._pending[key] = None
            if etag:
                self._etags[key] = etag
            else:
                self._etags.pop(key, None)
            self._start()
            self._cond.notify_all()

    def settle(self, key: str) -> None:
        """Before ``key`` is written again: its pending delete, if any, is sent now (S3Error if
        that fails), or one under way is waited for."""
        with self._cond:
            mine = key in self._pending
            if mine:
                self._take([key])
            else:
                while key in self._sending:
                    self._cond.wait()
                return
        self._send([key])

    def flush(self, prefix: str = "") -> None:
        """Send every pending delete of a key under ``prefix`` now and wait for those under way
        (rmdir, fsync of a directory, unmount). S3Error or TransportError if sending failed:
        those keys stay pending."""
        self._flush(lambda k: k.startswith(prefix))

    def flush_with(self, prefix: str, keys: list[str]) -> list[tuple[str, str]]:
        """Delete ``keys`` (not recorded: the caller waits for the answer) after every pending
        delete of a key under ``prefix``, in one DeleteObjects with them once those under way
        are answered; returns ``[(key, error code)]`` of what S3 did not delete (a pending key
        among them is shown again, as by any batch).

        rmdir of a directory whose files this mount has just removed: its marker and holder go
        in the same request as the files (the connector sends a batch's keys deepest first, so
        a server that keeps directories, SeaweedFS, sees the directory emptied before its
        marker goes), one round trip instead of the files' batch and then the marker's. Many
        pending (2 x :data:`MIN_BATCH` or more: ``rm -rf`` of a large directory) go first in
        :func:`shares` side by side, and ``keys`` with what is left once all are answered.
        S3Error or TransportError if a request failed: the pending keys stay pending (and
        ``keys`` are not sent).
        """
        with self._cond:
            batches = shares([k for k in self._pending if k.startswith(prefix)])
            if len(batches) > 1:
                for batch in batches:
                    self._take(batch)
            else:
                batches = []
        failed = self._side_by_side(batches)
        with self._cond:
            while any(k.startswith(prefix) for k in self._sending):
                self._cond.wait()
            mine = [k for k in self._pending if k.startswith(prefix)]
            self._take(mine)
        return failed + self._send(mine, keys)

    def refused(self, prefix: str) -> list[tuple[str, str]]:
        """``[(key, S3's code)]`` of the deletes under ``prefix`` S3 refused since the last call
        that asked for them (each told once, as fsync tells a write-back error)."""
        with self._cond:
            mine = [(k, code) for k, code in self._refused.items() if k.startswith(prefix)]
            for key, _ in mine:
                del self._refused[key]
        return mine

    def pending(self) -> int:
        """How many deletes are not yet answered."""
        with self._cond:
            return len(self._pending) + len(self._sending)

    def close(self) -> list[str]:
        """At unmount: stop the thread and send what is pending; returns the keys that stay
        recorded (sent at the next mount)."""
        self._stop_sender()
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - they stay recorded for the next mount
            log.error(
                "unmount: %d deletes could not be sent (%s); sent at the next mount", self.pending(), exc
            )
        self._pool.shutdown(wait=True)
        with self._cond:
            left = list(self._pending)
        self._journal.close()
        return left

    def halt(self) -> None:
        """Stop sending, as a killed mount does: what is pending stays recorded for the next
        mount, and no batch is sent after this returns (one under way is waited for)."""
        self._stop_sender()
        self._pool.shutdown(wait=True)
        self._journal.close()

    def _stop_sender(self) -> None:
        """No new batch from the background thread; wait for those it has under way."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._cond.wait_for(lambda: self._batches == 0)

    # -- sending ---------------------------------------------------------------------------

    def _open_journal(self) -> None:
        with self._cond:
            if not self._opened:
                self._journal.open()
                self._opened = True

    def _start(self) -> None:
        """The background sender runs once there is something to send (caller holds _cond)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="deletes", daemon=True)
            self._thread.start()

    def _flush(self, match: Callable[[str], bool]) -> None:
        with self._cond:
            mine = [k for k in self._pending if match(k)]
            self._take(mine)
        self._side_by_side(shares(mine))
        with self._cond:
            while any(match(k) for k in self._sending):
                self._cond.wait()

    def _side_by_side(self, batches: list[list[str]]) -> list[tuple[str, str]]:
        """Send ``batches`` (taken) at once, one in this thread and the rest on the pool;
        returns the keys S3 did not delete, with its codes. Raises the first batch's error
        once every batch is answered (or back in pending)."""
        if len(batches) <= 1:
            return [pair for batch in batches for pair in self._send(batch)]
        sent = [self._pool.submit(self._send, batch) for batch in batches[1:]]
        try:
            failed = self._send(batches[0])
        finally:
            for future in sent:
                future.exception()
        for future in sent:
            failed.extend(future.result())
        return failed

    def _take(self, keys: list[str]) -> None:
        """Move ``keys`` from pending to under way (caller holds _cond). What stays pending has
        waited its window already (``_since`` stays): it goes as soon as a batch may."""
        for key in keys:
            del self._pending[key]
            self._sending.add(key)

    def _send(self, keys: list[str], extra: list[str] | None = None) -> list[tuple[str, str]]:
        """One DeleteObjects of ``keys`` (taken) and of ``extra`` (not recorded); on failure
        ``keys`` are pending again, and it raises. Returns ``[(key, error code)]`` of the keys
        of either that S3 did not delete."""
        others = set(extra or ())
        with self._cond:
            etags = {k: self._etags[k] for k in keys if k in self._etags}
            log.debug(
                "DeleteObjects of %d keys%s: %d keys under way, %d waiting",
                len(keys),
                " and %d of a directory" % len(others) if others else "",
                len(self._sending),
                len(self._pending),
            )
        try:
            answer = self.store.delete_keys(keys + [k for k in others if k not in keys], etags=etags)
        except BaseException:
            with self._cond:
                self._sending.difference_update(keys)
                self._pending.update(dict.fromkeys(keys))
                self._cond.notify_all()
            raise
        failed = [(key, code) for key, code in answer if key not in others]
        try:
            for key, code in failed:
                if code == "PreconditionFailed":
                    log.error("%s changed in S3 since this mount saw it (another client wrote it): "
                              "theirs stays, not deleted; it is there again", key)
                else:
                    log.error("could not delete %s (%s): it is there again", key, code)
                    with self._cond:
                        if len(self._refused) < REFUSALS_KEPT:
                            self._refused[key] = code
            stayed = {key for key, _ in failed}
            self.answered([k for k in keys if k not in stayed], failed)
            for key in keys:  # answered for good: nothing more to send
                self._journal.record(key, None)
        finally:
            with self._cond:
                self._sending.difference_update(keys)
                for key in keys:
                    if key not in self._pending:  # added again meanwhile: its own version
                        self._etags.pop(key, None)
                self._cond.notify_all()
        return answer

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                # Gather: until the window has passed since the oldest key, or a batch is full.
                while not self._closed and len(self._pending) < BATCH:
                    left = self._since + self.window - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                # Up to PARALLEL under way: the free slots take a share each of what waits.
                while not self._closed and self._batches >= PARALLEL:
                    self._cond.wait()
                if self._closed:
                    return
                batches = self._cut(PARALLEL - self._batches)
                self._batches += len(batches)
            for batch in batches:
                self._pool.submit(self._send_in_background, batch)

    def _cut(self, slots: int) -> list[list[str]]:
        """Up to ``slots`` of the :func:`shares` of what waits, taken (caller holds _cond); none
        if a flush sent them meanwhile."""
        batches = shares(list(self._pending))[:slots]
        for batch in batches:
            self._take(batch)
        return batches

    def _send_in_background(self, batch: list[str]) -> None:
        try:
            self._send(batch)
        except Exception as exc:  # noqa: BLE001 - pending again; retried after a pause
            log.warning("delete of %d keys failed (%s); retried in %.0f s", len(batch), exc, RETRY_PAUSE)
            with self._cond:
                self._cond.wait_for(lambda: self._closed, RETRY_PAUSE)
        finally:
            with self._cond:
                self._batches -= 1
                self._cond.notify_all()
