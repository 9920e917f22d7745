"""A bound on bytes held in memory at once, shared by many threads (e.g. upload parts)."""

from __future__ import annotations

import threading


class ByteBudget:
    """At most ``limit`` bytes taken at once; :meth:`take` waits for room.

    A request larger than the whole budget takes all of it (it waits until nothing else
    is taken), so any size goes through and memory stays at ``max(limit, largest request)``::

        >>> b = ByteBudget(8 << 20); n = b.take(5 << 20); b.used
        5242880
        >>> b.give(n); b.used
        0

    :param limit: the most bytes taken at once (at least 1).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._cond = threading.Condition()
        self._used = 0  # guarded by _cond
        self._peak = 0  # guarded by _cond: the most ever taken at once

    def take(self, size: int) -> int:
        """Wait until ``size`` bytes (at most ``limit``) fit, take them; returns what to give back."""
        size = min(max(size, 0), self.limit)
        with self._cond:
            while self._used + size > self.limit:
                self._cond.wait()
            self._used += size
            self._peak = max(self._peak, self._used)
        return size

    def give(self, size: int) -> None:
        """Give back what :meth:`take` returned."""
        with self._cond:
            self._used -= size
            self._cond.notify_all()

    @property
    def used(self) -> int:
        """Bytes taken now."""
        with self._cond:
            return self._used

    @property
    def peak(self) -> int:
        """The most bytes ever taken at once."""
        with self._cond:
            return self._peak
