"""The size the kernel holds of each file, as far as our replies told it.

The kernel keeps a file's size (``i_size``) from our last reply about it (a lookup's or a stat's
getattr, a readdirplus entry) and cuts every read at it while that reply's attributes are valid
(``attr_timeout``): a read crossing it returns only the bytes before it, and the next read, at
it, returns nothing: the end of the file. Past the timeout, a read crossing the size asks us
again (a getattr by handle) and goes on to the size we give.

So an open that follows a version of another size than the one the kernel was told, within the
timeout, must not read it: a longer version would be read cut at the old size, with no error (a
``cat`` on one mount during ``git checkout`` on another, round 39). Such an open is ESTALE
instead: the kernel looks the name up again (LOOKUP_REVAL), learns the size, and opens again.
This table is how the open knows what the kernel holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .expiring import ExpiringLRU, ttl_cache

#: Seconds a size is remembered past the kernel's attribute timeout: the reply travels, and the
#: kernel counts the timeout in jiffies from when it took the reply.
GRACE = 1.0


class KernelSizes:
    """Per path, the file size last told to the kernel, for as long as the kernel holds it
    valid (``ttl`` + :data:`GRACE`), at most ``maxsize`` paths (least recently told dropped
    first: a path not held is never a reason for ESTALE). Thread-safe.

    :param ttl: the kernel's attribute timeout (``attr_timeout``), in seconds.
    :param maxsize: the most paths held.
    :param timer: the time now, in seconds (the operations' clock).
    """

    def __init__(self, ttl: float, maxsize: int, timer: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._sizes: ExpiringLRU[str, int] = ttl_cache(maxsize, ttl + GRACE, timer)  # GUARDED_BY(_lock)
        self.enabled = ttl > 0  # immutable: with no timeout the kernel asks before it cuts

    def told(self, path: str, size: int) -> None:
        """The kernel was told that ``path`` is a file of ``size`` bytes (a getattr's or a
        readdirplus entry's reply)."""
        if self.enabled:
            with self._lock:
                self._sizes[path] = size
                self._sizes.trim()  # (an ls -l of a large directory tells many; each lasts seconds)

    def grew(self, path: str, end: int) -> None:
        """A write or fallocate through a handle of ``path`` reached byte ``end``: the kernel
        grew its size to it, if it was smaller (it does so itself, telling us nothing)."""
        with self._lock:
            size = self._sizes.get(path)
            if size is not None and size < end:
                self._sizes[path] = end

    def moved(self, old: str, new: str) -> None:
        """``old`` was renamed to ``new``: the kernel's node, and the size it holds, go along."""
        with self._lock:
            size = self._sizes.pop(old)
            if size is None:
                self._sizes.pop(new)
            else:
                self._sizes[new] = size

    def forget(self, path: str) -> None:
        """``path`` was unlinked, or its size is no longer known: no reason for ESTALE."""
        with self._lock:
            self._sizes.pop(path)

    def differs(self, path: str, size: int) -> int | None:
        """The size the kernel holds of ``path`` if it is still valid there and not ``size``
        (an open of that size must be ESTALE first), else None."""
        with self._lock:
            held = self._sizes.get(path)
        return held if held is not None and held != size else None
