"""The staging journal: what each staged item still owes S3, in one file.

Every change to a staged item's record (a :class:`StagedRecord
<s3fs_mount.fs.staging.StagedRecord>`, as its ``to_json`` writes it) appends one JSON line
``{"id": ..., "state": {...}}`` to ``staging.journal`` in the cache
directory; ``"state": null`` says the item owes nothing any more. The last
line of an id wins. One ``write`` per record, on an ``O_APPEND`` file: a
killed mount leaves whole lines (a power cut may leave a torn last line,
which :meth:`StagingJournal.read` skips). ``durable`` records are fsync'd.

Why one file and not a small file per item: creating, renaming and
unlinking a file per staged item cost three metadata operations each, and on
an ext4 without a journal every new inode is allocated past the inodes freed
in the last 30 s, one by one: thousands of small files made each create
slower than the upload it staged (see bench/README.md).

The file is rewritten with only the live records (a temporary file renamed
over it) when it is opened and whenever it has grown well past them.

**A full disk.** The records that let an upload finish (the digest of what it
sends, then "owes nothing") must not wait for room on a disk full of the dirty
data they upload: the journal keeps ``RESERVE`` bytes allocated past its end
(``fallocate(KEEP_SIZE)``), topped up as appends use them, and a rewrite that
finds no room leaves the file as it is and appends to it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from typing import Any

from s3fs_mount.fs import filecalls

log = logging.getLogger(__name__)

JOURNAL_NAME = "staging.journal"
#: Rewrite the journal once it is larger than this and more than twice its live records.
COMPACT_AT = 1 << 20
#: Bytes kept allocated past the journal's end, so that records still go in when the disk is full.
RESERVE = 128 << 10

State = dict[str, Any]


class StagingJournal:
    """The append-only record of staged items in ``directory``. Thread-safe.

    :param directory: the cache directory (one mount's, under its lock).
    :param compact_at: size in bytes past which the journal may be rewritten.
    :param name: the journal's file name in ``directory`` (the pending deletes keep their own).

    Usage::

        journal = StagingJournal(cache_root)
        states = journal.open()          # id -> state, as the last run left them
        journal.record(item_id, state)    # an item changed
        journal.record(item_id, None)     # it owes nothing any more
        journal.close()
    """

    def __init__(
        self, directory: str, compact_at: int = COMPACT_AT, name: str = JOURNAL_NAME, reserve: int = RESERVE
    ) -> None:
        self.directory = directory  # immutable after __init__
        self.path = os.path.join(directory, name)  # immutable after __init__
        self.compact_at = compact_at  # immutable after __init__
        self.reserve = reserve  # immutable after __init__
        self._lock = threading.Lock()  # immutable after __init__; nothing is taken while it is held
        self._fd = -1  # GUARDED_BY(_lock)
        self._size = 0  # GUARDED_BY(_lock): bytes in the journal file
        self._reserved = 0  # GUARDED_BY(_lock): the file's blocks are allocated up to here
        self._live: dict[str, bytes] = {}  # GUARDED_BY(_lock): id -> its last line
        self._live_bytes = 0  # GUARDED_BY(_lock)
        self._torn = False  # GUARDED_BY(_lock): a write failed part-way: rewrite before appending again

    @staticmethod
    def read(path: str) -> dict[str, State]:
        """The live states in the journal at ``path`` (empty if there is none)."""
        states: dict[str, State] = {}
        bad = 0
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return states
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                item_id, state = entry["id"], entry["state"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if state is None:
                states.pop(item_id, None)
            else:
                states[item_id] = state
        if bad:
            log.warning("%s: skipped %d unreadable line(s)", path, bad)
        return states

    def open(self) -> dict[str, State]:
        """Read the journal, rewrite it with its live records only, and open it for appending."""
        states = self.read(self.path)
        with self._lock:
            self._live = {item_id: _line(item_id, state) for item_id, state in states.items()}
            self._live_bytes = sum(map(len, self._live.values()))
            self._rewrite()
        return states

    def record(self, item_id: str, state: State | None, durable: bool = False) -> None:
        """Append the item's new state (``None``: it owes nothing); fsync with ``durable``."""
        line = _line(item_id, state) if state is not None else b""
        with self._lock:
            if state is None:
                gone = self._live.pop(item_id, None)
                if gone is None:
                    return  # nothing recorded for it (a new file's first reset): nothing to take back
                self._live_bytes -= len(gone)
                line = _line(item_id, None)
            else:
                self._live_bytes += len(line) - len(self._live.get(item_id, b""))
                self._live[item_id] = line
            if self._torn or (self._size > self.compact_at and self._size > 2 * self._live_bytes):
                self._compact(line)
            else:
                self._append(line)
            if durable:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- under self._lock ------------------------------------------------------------

    def _compact(self, line: bytes) -> None:
        """Rewrite the journal with its live records (``line``, the last, among them); on a full
        disk, append ``line`` to the file as it is instead, unless the file ends in a torn line."""
        try:
            self._rewrite()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or self._torn:
                raise
            log.debug("%s: no room to rewrite it (%s): appended to", self.path, exc)
            self._append(line)

    def _append(self, line: bytes) -> None:
        try:
            _write_all(self._fd, line)
        except OSError:
            self._torn = True  # part of the line may be there: rewrite before the next append
            raise
        self._size += len(line)
        if self._reserved - self._size < self.reserve // 2:
            self._keep_room()

    def _keep_room(self) -> None:
        """Allocate ``reserve`` bytes past the file's end (its size kept): appends into them need
        no room from the disk. A disk without the room, or a file system without fallocate,
        keeps what it has."""
        if self.reserve <= 0:
            return
        try:
            filecalls.fallocate(self._fd, filecalls.KEEP_SIZE, self._size, self.reserve)
        except OSError as exc:
            log.debug("%s: no room kept past its end (%s)", self.path, exc)
        else:
            self._reserved = self._size + self.reserve

    def _rewrite(self) -> None:
        """Replace the journal by its live records (written and fsync'd before the rename)."""
        tmp = self.path + ".tmp"
        body = b"".join(self._live.values())
        # Nothing live (a journal opened for its first record: a mount's first rename or unlink):
        # no fsync, which cost a RenameObject's rename tens of ms on a loaded disk (round 39).
        # Lost, or the old journal brought back by a power cut, it owes what it owes now: nothing.
        durable = bool(body)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
            if durable:
                os.fsync(fd)
        except OSError:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if durable:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename too, or a power cut could bring back the old journal
            finally:
                os.close(dir_fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = self._reserved = len(body)
        self._torn = False
        self._keep_room()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a regular file rarely takes less than all in one call)."""
    view = memoryview(data)
    written = 0
    while written < len(data):
        n = os.write(fd, view[written:])
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written += n


def _line(item_id: str, state: State | None) -> bytes:
    return (json.dumps({"id": item_id, "state": state}) + "\n").encode()


class OwedJournal:
    """A journal of what a mount still owes S3 outside its staged files (directory holders
    to write, renames to finish), with the life such records have: opened at the first record,
    and at unmount removed when nothing is owed any more (a cache directory holds no file for
    what is not owed), kept for the next mount when something is. Thread-safe.

    :param directory: the cache directory (None: nothing is recorded, every call does nothing).
    :param name: the journal's file name in it.

    Locks: ``_lock`` guards ``_opened``; the journal has its own lock, taken after it.
    """

    def __init__(self, directory: str | None, name: str) -> None:
        self._journal = StagingJournal(directory, name=name) if directory else None
        self._lock = threading.Lock()
        self._opened = False  # GUARDED_BY(_lock): the journal is open for appending

    def recover(self) -> dict[str, State]:
        """What a previous run recorded and still owed (recorded until taken back)."""
        if self._journal is None:
            return {}
        left = StagingJournal.read(self._journal.path)
        if left:
            self._open()
        else:  # a killed run's journal that owes nothing (each record taken back): no file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._journal.path)
        return left

    def record(self, item_id: str, state: State | None) -> None:
        """``item_id`` owes ``state`` now (None: nothing any more)."""
        if self._journal is None:
            return
        if state is not None:
            self._open()
        self._journal.record(item_id, state)

    def close(self, owed: int) -> bool:
        """At unmount, with ``owed`` records still owed: the journal is removed if that is none,
        else kept for the next mount. Whether it was kept."""
        with self._lock:
            opened, self._opened = self._opened, False
        if self._journal is None or not opened:
            return False
        self._journal.close()
        if owed:
            return True
        try:
            os.unlink(self._journal.path)
        except FileNotFoundError:
            pass
        return False

    def _open(self) -> None:
        assert self._journal is not None
        with self._lock:
            if not self._opened:
                self._journal.open()
                self._opened = True
