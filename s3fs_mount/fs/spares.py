"""Empty data files made ahead of need, so that a new staged file does not wait for one.

A new file's create stages it in a data file of its own (:mod:`s3fs_mount.fs.staging`). On an
ext4 without a journal (this project's test machine) each new inode is sought past the inodes
freed in the last 30 s, so while other processes delete files one ``open(O_CREAT)`` in the cache
directory took 100-350 us of CPU: as much as the rest of a small file's create (bench/README.md,
round 35). A thread of its own keeps up to ``count`` empty files open, and a new item takes one
(a rename to its name: no new inode). The thread starts with the first new file: a mount that
makes none (read-only, or reading only) makes no spare either.

A spare is named ``<id>.spare`` until it is taken, so it is never mistaken for an item's data
(``<id>.data``): recovery removes the ones a killed mount left (:func:`remove_left`), and
spares are made only once recovery has run (:meth:`SpareFiles.allow`).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

log = logging.getLogger(__name__)

#: Empty files kept ready, made again once half are taken: a burst empties them only when its
#: creates outrun the thread, and each create then makes its own file, as it did before.
SPARE_FILES = 16
SUFFIX = ".spare"


class SpareFiles:
    """Empty files in ``root``, made by a thread of their own, taken as items' data files.

    Locks: ``_lock`` guards the fields below it; nothing is taken while it is held, and no file
    call is made under it.
    """

    def __init__(self, root: str, count: int = SPARE_FILES) -> None:
        self.root = root  # immutable after __init__
        self.count = count  # immutable after __init__
        self._lock = threading.Lock()
        self._ready: list[tuple[str, int]] = []  # GUARDED_BY(_lock): (id, fd open read-write)
        self._allowed = False  # GUARDED_BY(_lock): recovery has run
        self._closed = False  # GUARDED_BY(_lock)
        self._thread: threading.Thread | None = None  # GUARDED_BY(_lock); set once, by a take
        #: Set when the thread is to make more (fewer than half are ready) or stop.
        self._wanted = threading.Event()

    def allow(self) -> None:
        """Spares may be made from the next new file on: recovery, which removes the files a run
        before left, has run."""
        with self._lock:
            self._allowed = True

    def take(self) -> tuple[str, int] | None:
        """An id and an fd open read-write on an empty file now named ``<id>.data`` in ``root``,
        or None when no spare is ready (the caller makes the file itself). The first call once
        allowed starts the thread that makes them."""
        start = None
        with self._lock:
            spare = self._ready.pop() if self._ready else None
            usable = self._allowed and not self._closed and self.count > 0
            if usable and self._thread is None:
                start = self._thread = threading.Thread(target=self._run, name="spare-files", daemon=True)
            low = usable and len(self._ready) <= self.count // 2
        if start is not None:
            start.start()
        elif low:
            self._wanted.set()
        if spare is None:
            return None
        spare_id, fd = spare
        try:
            os.rename(self._path(spare_id), os.path.join(self.root, spare_id + ".data"))
        except OSError as exc:  # the directory was changed under us: the caller makes its own
            log.debug("spare file %s not taken: %s", spare_id, exc)
            os.close(fd)
            _remove(self._path(spare_id))
            return None
        return spare

    def ready(self) -> int:
        """How many spares are ready now."""
        with self._lock:
            return len(self._ready)

    def close(self) -> None:
        """Stop making spares, and remove the ones not taken."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join()
        for spare_id, fd in ready:
            os.close(fd)
            _remove(self._path(spare_id))

    def _run(self) -> None:
        while True:
            self._wanted.clear()
            with self._lock:
                if self._closed:
                    return
                missing = self.count - len(self._ready)
            for _ in range(missing):
                made = self._make()
                if made is None:
                    break  # no room for one: tried again when one is taken
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._ready.append(made)
                if not keep:
                    os.close(made[1])
                    _remove(self._path(made[0]))
                    return
            self._wanted.wait()

    def _make(self) -> tuple[str, int] | None:
        spare_id = uuid.uuid4().hex
        try:
            return spare_id, os.open(self._path(spare_id), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            log.debug("no spare file made in %s: %s", self.root, exc)
            return None

    def _path(self, spare_id: str) -> str:
        return os.path.join(self.root, spare_id + SUFFIX)


def remove_left(root: str, names: list[str]) -> None:
    """Remove the spares of ``names`` (the listing of ``root``) that a killed mount left."""
    for name in names:
        if name.endswith(SUFFIX):
            _remove(os.path.join(root, name))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
