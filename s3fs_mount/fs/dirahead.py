"""Dir-ahead: ``rm -r``'s next directory looked up while the walk removes the one before.

GNU ``rm -r`` removes a directory's subdirectories one after the other, and for
each: an ``lstat`` (a lookup here: the holder's HEAD, and where the holder is a
``_$folder$`` that is not there, the marker's, for its stored mode), a readdir
(a LIST), its files' unlinks, its rmdir (a DeleteObjects, then a LIST). Each of
those waits for the one before, so the lookup's round trips (two HEADs one
after the other, ~2.3 ms of ~11 a directory of the bench's tree) were paid
once a directory. The rmdir of a directory begins the lookup of the next
subdirectory of its parent (in the order a listing of the parent a moment ago
gave them; ``Namespace._begin_next_subdir``): its holder's HEADs on a thread
here, its listing on the list-ahead's (fs/listahead.py), both beside the
rmdir's own DeleteObjects and LIST, whose answers it waits for anyway. The
walk's ``lstat`` of that directory then finds the answer fetched, or waits for
the one in flight: a directory is never asked about twice.

Bounds: at most :data:`KEPT` answers are kept (the oldest dropped: its HEADs
wasted, nothing else), sent on :data:`WORKERS` threads. An rmdir that no
lookup of the next directory follows (not rm -r) leaves one answer unused.

Freshness is the namespace's to judge (its lookup takes an answer only within
``attr_ttl`` of when it was asked, ``seen_at``, and if nothing this mount did
changed the path since); an answer whose path this mount changes is dropped
(:meth:`DirAhead.drop`).

Locks: ``_lock`` guards ``_ahead``; it is never held while waiting for an answer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from s3fs_mount.fs import attrs as A
from s3fs_mount.s3.retry import ahead_of_need

log = logging.getLogger(__name__)

#: Threads fetching directories' attributes ahead (rm -r walks one directory at a time).
WORKERS = 2
#: Answers kept at once.
KEPT = 8


class DirAhead:
    """Directories' attributes fetched ahead of their lookup (see the module docstring).

    :param workers: threads sending the HEADs; 0 turns it off (:meth:`begin` sends nothing).

    Usage::

        ahead = DirAhead()
        ahead.begin("/t/d02", lambda: fetch("/t/d02"))   # while the walk removes /t/d01
        found = ahead.take("/t/d02")                     # its lookup: the answer, or None
    """

    def __init__(self, workers: int = WORKERS) -> None:
        self._lock = threading.Lock()
        #: path -> its answer, oldest first. GUARDED_BY(_lock)
        self._ahead: OrderedDict[str, concurrent.futures.Future[A.Attributes]] = OrderedDict()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "dir-ahead") if workers > 0 else None

    def begin(self, path: str, fetch: Callable[[], A.Attributes]) -> bool:
        """Fetch directory ``path``'s attributes (``fetch()``, with ``seen_at`` set) on a thread
        for its lookup to :meth:`take`; False (nothing sent) if one is kept already, or it is off."""
        if self._pool is None:
            return False
        with self._lock:
            if path in self._ahead:
                return False
            try:
                future = self._pool.submit(_ahead, fetch)
            except RuntimeError:  # shut down: the mount is going away
                return False
            self._ahead[path] = future
            pushed = []
            while len(self._ahead) > KEPT:
                pushed.append(self._ahead.popitem(last=False)[1])
        for old in pushed:
            old.cancel()
        return True

    def take(self, path: str) -> A.Attributes | None:
        """The answer fetched for ``path`` (waited for if under way), taken out; None if none was
        begun, or it failed (the lookup asks itself, and reports)."""
        with self._lock:
            future = self._ahead.pop(path, None)
        if future is None:
            return None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            return None
        except Exception as exc:  # noqa: BLE001 - the lookup asks again itself
            log.debug("lookup ahead of %s failed (%s): asked again", path, exc)
            return None

    def drop(self, path: str, tree: bool = False) -> None:
        """Our own change of ``path`` (with ``tree``: of what is under it too): its answer goes."""
        under = path.rstrip("/") + "/"
        with self._lock:
            names = [n for n in self._ahead if n == path or (tree and n.startswith(under))]
            dropped = [self._ahead.pop(n) for n in names]
        for future in dropped:
            future.cancel()

    def close(self) -> None:
        """Nothing more is fetched (the mount is going away)."""
        with self._lock:
            dropped, self._ahead = list(self._ahead.values()), OrderedDict()
        for future in dropped:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _ahead(fetch: Callable[[], A.Attributes]) -> A.Attributes:
    """``fetch()``, sent ahead of need (s3/retry.py ``ahead_of_need``): its lookup asks again itself."""
    with ahead_of_need():
        return fetch()
