"""What HEADs told of files, kept on disk across mounts, by version.

A listing gives a file's size, ETag and Last-Modified, not its ``x-amz-meta-*``
(mode, owner, a symlink's type), so the namespace HEADs a file before it
shows it (:mod:`s3fs_mount.fs.namespace`). What a HEAD told is recorded here,
in an SQLite table in the mount's cache directory, with the version it holds
for (ETag, size, Last-Modified): a later mount that lists the same version
shows it whole with no HEAD, so ``ls -l`` of a tree it has seen costs its
listings only. A version that differs in any of the three is asked again
(another client's chmod is a self-copy that keeps the ETag and moves
Last-Modified).

It is a cache: a lost or damaged table costs HEADs, never a wrong answer,
so writes are not synced (``synchronous=OFF``), and a table that cannot be
opened or written (a full disk) is logged once and not used; it is opened again
:data:`REOPEN_AFTER` seconds later, at the next write or listing, and so on until that
succeeds (before round 37 it stayed off for the rest of the mount once the disk
had been full). The drops queued meanwhile are applied then (the records are
not kept); past :data:`MAX_QUEUED` of them, the table is emptied instead: a
record of a version this mount changed must not stand for the new one.
At most :data:`MAX_ROWS` files are kept; the oldest records go first.

When: a record is only queued (no JSON, no SQL); a thread of its own writes the
queue once no record came for :data:`QUIET` seconds, so the HEADs of a burst
(``ls -l`` of 10,000: a record each, on the readdir's thread) do not pay for
their rows while the burst goes on: the encoding and the inserts took ~10% of the
mount's GIL in ``ls -l`` (bench/README.md, round 36 helper 1). A listing asks the
table and reads what is queued over its answer (:meth:`KnownVersions.find`): it
writes nothing, since each page of a walk's listing comes while that walk's HEADs
are still recorded (``ls -l`` of 10,000 wrote ~1,000 rows before each of its 9
later pages, on the readdir's thread: round 38); unmount writes the rest
(:meth:`KnownVersions.close`). At most
:data:`MAX_QUEUED` records wait: past that, the one that fills the queue writes
it at once (memory bounded in a burst that never pauses). A mount killed before
a write loses those rows: what they told is asked again (HEADs).

Locks: ``_db_lock`` guards the connection (one statement at a time, and a
queue taken is written before another query: a query and the queue read after it
under one hold see every record); ``_lock`` guards the queue and the
writer's fields, and is held for no statement, so a record never waits for a
write. ``_db_lock`` is taken before ``_lock`` when both are. Neither is held
during a request, nor while waiting for the writer thread.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time

from s3fs_mount.fs import attrs as A

log = logging.getLogger(__name__)

#: Files whose attributes are kept (~200 bytes each on disk).
MAX_ROWS = 2_000_000
#: Seconds without a new record before the queued ones are written (by the writer thread).
QUIET = 1.0
#: Records queued at most: the one past it writes them all at once (one transaction).
MAX_QUEUED = 20_000
#: Paths asked at once (SQLite's bound on a statement's parameters is 32,766).
QUERY_CHUNK = 900
FILE_NAME = "attributes.sqlite"
#: Seconds after the table could not be opened or written before it is opened again.
REOPEN_AFTER = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    path TEXT PRIMARY KEY,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    facts TEXT NOT NULL
)
"""


class KnownVersions:
    """Whole attributes of file versions, by path, from HEADs of this or earlier mounts.

    :param directory: where the table is kept (the mount's cache directory for the bucket, made
        and locked by the staging cache); None: nowhere (nothing is kept, nothing found).
    :param defaults: the attributes of objects without metadata (as the namespace's).
    """

    def __init__(
        self,
        directory: str | None,
        defaults: A.Defaults,
        quiet: float = QUIET,
        max_queued: int = MAX_QUEUED,
        reopen_after: float = REOPEN_AFTER,
    ) -> None:
        self.defaults = defaults
        self.quiet = quiet  # immutable after __init__
        self.max_queued = max_queued  # immutable after __init__
        self.reopen_after = reopen_after  # immutable after __init__
        self._db_lock = threading.Lock()
        self._lock = threading.Lock()
        #: What is still to write, in order: ("put", (path, attributes)), ("drop", (path,)),
        #: ("drop_tree", (path,)). A put's row is encoded when written.
        self._writes: list[tuple[str, tuple[object, ...]]] = []  # GUARDED_BY(_lock)
        self._recorded = 0  # GUARDED_BY(_lock): records and drops queued so far (the writer's clock)
        self._closed = False  # GUARDED_BY(_lock)
        #: Set when the queue gets its first entry since a write, and at close: the writer looks.
        #: Not set by each record: the writer, waiting for the records to stop, is woken by none.
        self._wake = threading.Event()
        self._stop = threading.Event()  #: set at close
        self._writer: threading.Thread | None = None  # GUARDED_BY(_lock); started by the first record
        #: GUARDED_BY(_db_lock); None: not in use. Set once here, and to None once given up: read
        #: without the lock as a hint (a record queued after it was given up is never written).
        self._db: sqlite3.Connection | None = None
        #: False while the table is known to be empty: a listing page asks it nothing.
        self._any = False  # GUARDED_BY(_lock)
        #: GUARDED_BY(_db_lock): time.monotonic() the table was given up (could not be opened or
        #: written), to open it again REOPEN_AFTER later; None: in use, or nowhere.
        self._off_since: float | None = None
        #: GUARDED_BY(_db_lock): the drops queued while it was off, to apply when it is back;
        #: None: more than max_queued were (it is emptied then).
        self._missed: list[tuple[str, tuple[object, ...]]] | None = []
        self._path = os.path.join(directory, FILE_NAME) if directory is not None else None  # immutable
        if self._path is None:
            return
        with self._db_lock:
            if not self._open():
                self._off_since = time.monotonic()

    def _open(self, again: bool = False) -> bool:
        """Open the table (caller holds _db_lock, or is __init__); False, logged, if it cannot be."""
        assert self._path is not None
        db = None
        try:
            # Its metadata is the bucket's: readable by the mount's user alone, as staged files
            # are (SQLite gives its -wal and -shm files the table's mode).
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_SCHEMA)
            any_kept = db.execute("SELECT 1 FROM versions LIMIT 1").fetchone() is not None
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            if again:
                log.debug("file attributes still not kept across mounts: %s: %s", self._path, exc)
            else:
                log.warning("file attributes are not kept across mounts: %s: %s", self._path, exc)
            return False
        self._db = db
        with self._lock:
            self._any = any_kept
        return True

    def record(self, path: str, attributes: A.Attributes) -> None:
        """Keep what is known whole of file ``path`` (written with the next batch). Not kept
        until S3's date of the version is known (``stored``: our own writes, until listed)."""
        if attributes.is_dir or not attributes.complete or not attributes.etag or not attributes.stored:
            return
        if self._db is None and self._off_since is None:  # (hints, read without the lock)
            return
        with self._lock:
            self._writes.append(("put", (path, attributes)))
            self._any = True
            full = self._queued_locked()
        if full:
            self.flush()

    def drop(self, path: str, tree: bool = False) -> None:
        """Drop what is kept of ``path`` (``tree``: and of everything under it): this mount
        changed it, and what a HEAD told of an earlier version must not stand for the new one
        (the same bytes written again within a second have the same ETag, size and date)."""
        with self._lock:
            if (self._db is None and self._off_since is None) or not self._any:
                return  # nothing kept, nothing to be written: each create would queue a DELETE
            self._writes.append(("drop_tree" if tree else "drop", (path,)))
            full = self._queued_locked()
        if full:
            self.flush()

    def find(self, paths: list[str]) -> dict[str, A.Attributes]:
        """What is kept of ``paths``: path -> whole attributes (``stored``: the version's
        Last-Modified), for the caller to check against its listing.

        The table's rows, with what is queued read over them in order (a record, a drop): the
        queue is not written here (see the module's docstring)."""
        found: dict[str, A.Attributes] = {}
        with self._lock:
            if not paths or not self._any:
                return found
        with self._db_lock:
            if self._db is None:
                self._reopened()  # given up a while ago: asked again, as a write would
            # Under _db_lock no queue is taken for writing: the rows and this copy of the queue
            # together hold every record made before it.
            with self._lock:
                queued = list(self._writes)
            for start in range(0, len(paths), QUERY_CHUNK):
                chunk = paths[start : start + QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = "SELECT path, etag, size, stored, facts FROM versions WHERE path IN (%s)" % marks
                rows = self._run_locked(lambda db, q=query, c=chunk: db.execute(q, c).fetchall())
                for path, etag, size, stored, facts in rows or []:
                    attributes = self._attributes(etag, size, stored, facts)
                    if attributes is not None:
                        found[path] = attributes
        if queued:
            self._read_queued(queued, set(paths), found)
        return found

    def _read_queued(
        self, queued: list[tuple[str, tuple[object, ...]]], wanted: set[str], found: dict[str, A.Attributes]
    ) -> None:
        """Apply ``queued`` (records and drops not yet written, in order) to ``found`` for the
        paths ``wanted``: what the table will say once they are written."""
        for op, row in queued:
            path = str(row[0])
            if op == "put":
                if path in wanted:
                    attributes = row[1]
                    assert isinstance(attributes, A.Attributes)
                    # As the row would give it back: a copy, dated to the second (_row's int).
                    stored = float(int(attributes.stored or 0))
                    found[path] = A.attributes_from(
                        attributes.metadata,
                        attributes.size,
                        stored,
                        self.defaults,
                        "file",
                        etag=attributes.etag,
                        headers=dict(attributes.headers),
                        storage_class=attributes.storage_class,
                        version_id=attributes.version_id,
                        digest=attributes.digest,
                        stored=stored,
                    )
            elif op == "drop":
                found.pop(path, None)
            else:  # drop_tree
                below = path.rstrip("/") + "/"
                for gone in [p for p in found if p == path or p.startswith(below)]:
                    del found[gone]

    def flush(self) -> None:
        """Write what is queued."""
        with self._db_lock:
            self._write_queue()

    def close(self) -> None:
        """Write what is queued and close the table; the writer thread ends."""
        with self._lock:
            self._closed = True
            writer = self._writer
        self._stop.set()
        self._wake.set()
        if writer is not None:
            writer.join()
        with self._db_lock:
            self._write_queue()
            if self._db is not None:
                self._db.close()
                self._db = None

    def _queued_locked(self) -> bool:
        """Something was queued (caller holds _lock): True past ``max_queued`` (the caller
        writes the queue at once), else the writer thread writes it once the records stop."""
        self._recorded += 1
        if len(self._writes) >= self.max_queued:
            return True
        if self._writer is None and not self._closed:
            self._writer = threading.Thread(target=self._write_when_quiet, name="known-writer", daemon=True)
            self._writer.start()
        if len(self._writes) == 1:
            self._wake.set()
        return False

    def _write_when_quiet(self) -> None:
        """The writer thread: once something is queued, wait until ``quiet`` seconds pass with
        no new record, then write the queue; at close, stop (close writes the rest)."""
        while True:
            self._wake.wait()
            with self._lock:
                if self._closed:
                    return
                self._wake.clear()
                seen = self._recorded
            while True:
                self._stop.wait(self.quiet)
                with self._lock:
                    if self._closed:
                        return
                    quiet = self._recorded == seen
                    seen = self._recorded
                if quiet:
                    self.flush()
                    break

    def _attributes(self, etag: str, size: int, stored: int, facts: str) -> A.Attributes | None:
        try:
            f = json.loads(facts)
            return A.attributes_from(
                f["meta"],
                size,
                float(stored),
                self.defaults,
                "file",
                etag=etag,
                headers=f["headers"],
                storage_class=f["class"],
                version_id=f["version"],
                digest=f["digest"],
                stored=float(stored),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.debug("a kept record could not be read (%s): asked again", exc)
            return None

    def _write_queue(self) -> None:
        """Write the queued rows, and keep the table within MAX_ROWS (caller holds _db_lock)."""
        with self._lock:
            rows, self._writes = self._writes, []
        if not rows:
            return
        if self._db is None and not self._reopened():
            self._miss(rows)
            return
        self._run_locked(lambda db: self._apply(db, rows))
        if self._db is None:  # the write failed: its drops are owed
            self._miss(rows)

    @staticmethod
    def _apply(db: sqlite3.Connection, rows: list[tuple[str, tuple[object, ...]]]) -> None:
        """Write ``rows`` (queued puts and drops) in one transaction, within MAX_ROWS."""
        db.execute("BEGIN")
        for op, row in rows:
            if op == "put":
                db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?)", _row(*row))
            elif op == "drop":
                db.execute("DELETE FROM versions WHERE path = ?", row)
            else:  # drop_tree
                path = str(row[0])
                below = path.rstrip("/") + "/"
                db.execute(
                    "DELETE FROM versions WHERE path = ? OR substr(path, 1, ?) = ?",
                    (path, len(below), below),
                )
        db.execute(
            "DELETE FROM versions WHERE rowid <= (SELECT MAX(rowid) FROM versions) - ?", (MAX_ROWS,)
        )
        db.execute("COMMIT")

    def _miss(self, rows: list[tuple[str, tuple[object, ...]]]) -> None:
        """``rows`` could not be written (caller holds _db_lock): keep their drops for when the
        table is back, up to max_queued."""
        if self._missed is None:
            return
        self._missed.extend(row for row in rows if row[0] != "put")
        if len(self._missed) > self.max_queued:
            self._missed = None

    def _reopened(self) -> bool:
        """The table given up, open it again if REOPEN_AFTER has passed (caller holds _db_lock),
        with the drops it missed applied (or emptied, if they were too many). True if it is open."""
        if self._off_since is None or time.monotonic() - self._off_since < self.reopen_after:
            return False
        if not self._open(again=True):
            self._off_since = time.monotonic()
            return False
        missed, self._missed = self._missed, []
        if missed is None:
            self._run_locked(lambda db: db.execute("DELETE FROM versions"))
        elif missed:
            self._run_locked(lambda db: self._apply(db, missed))
        if self._db is None:
            self._missed = missed  # failed again (_run_locked set _off_since)
            return False
        self._off_since = None
        log.warning("file attributes are kept across mounts again (%s)", self._path)
        return True

    def _run_locked(self, job):  # type: ignore[no-untyped-def]
        """Run ``job(db)`` (caller holds _db_lock); on an SQLite error, log it and stop using the
        table. None once it is not used (a write that failed a moment before, e.g. on a full
        disk, closed it)."""
        if self._db is None:
            return None
        try:
            return job(self._db)
        except sqlite3.Error as exc:
            log.warning(
                "file attributes are no longer kept across mounts: %s (tried again in %.0f s)",
                exc,
                self.reopen_after,
            )
            try:
                self._db.close()
            finally:
                self._db = None
                self._off_since = time.monotonic()
            return None


def _row(path: object, attributes: object) -> tuple[object, ...]:
    """The table's row for a queued record: ``attributes`` (whole, dated) of file ``path``."""
    assert isinstance(attributes, A.Attributes)
    facts = {
        "meta": attributes.metadata,
        "headers": attributes.headers,
        "class": attributes.storage_class,
        "version": attributes.version_id,
        "digest": attributes.digest,
    }
    return (path, attributes.etag, attributes.size, int(attributes.stored or 0), json.dumps(facts))
