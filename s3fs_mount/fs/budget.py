"""A bound on bytes held in memory at once, shared by many threads (e.g. upload parts)."""

from __future__ import annotations

import threading
import time


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


class BufferPool:
    """Buffers for part bytes, used again while uploads run, let go once none has been for a while.

    A fresh buffer for each part made the kernel fault in, and zero, every 4 KiB page of it (2,048
    faults per 8 MiB part, and the pages given back at its end): 17% of the mount's CPU in a
    1 GiB write (bench/README.md, "Sequential writes"). The buffers are bounded by whoever takes
    them (the uploads' :class:`ByteBudget`); here only reused::

        >>> pool = BufferPool(keep=64 << 20); buf = pool.get(8 << 20); len(buf)
        8388608
        >>> pool.put(buf); pool.get(4 << 20) is buf   # a larger free buffer serves a smaller part
        True
        >>> pool.put(buf); len(pool.get(16 << 20)); pool.held  # a larger part: the smaller ones go
        16777216
        0

    :param keep: the most bytes of free buffers kept (the smallest go first).
    :param idle: seconds with no buffer in use after which the free ones are let go.
    """

    def __init__(self, keep: int, idle: float = 2.0) -> None:
        self.keep = keep
        self.idle = idle
        self._lock = threading.Lock()
        self._free: list[bytearray] = []  # GUARDED_BY(_lock)
        self._out = 0  # GUARDED_BY(_lock): buffers in use
        self._idle_since = 0.0  # GUARDED_BY(_lock): time.monotonic() when _out last fell to 0
        self._timer: threading.Timer | None = None  # GUARDED_BY(_lock): the trim to come, if any

    def get(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its old contents are garbage); give it back with put."""
        with self._lock:
            self._out += 1
            fits = [b for b in self._free if len(b) >= size]
            if fits:
                buf = min(fits, key=len)
                self._free.remove(buf)
                return buf
            # None is large enough: parts grew (a stream's part size doubles), and the smaller
            # buffers would only add to the new ones in memory.
            self._free.clear()
        return bytearray(size)

    def put(self, buf: bytearray | None) -> None:
        """Give back a buffer :meth:`get` returned (nobody may still use it; None: one that must
        not be used again)."""
        with self._lock:
            self._out -= 1
            if buf is not None:
                self._free.append(buf)
            self._free.sort(key=len)
            while sum(len(b) for b in self._free) > self.keep:
                self._free.pop(0)
            if self._out == 0:
                self._idle_since = time.monotonic()
                if self._timer is None:
                    self._timer = threading.Timer(self.idle, self._trim)
                    self._timer.daemon = True
                    self._timer.start()

    def _trim(self) -> None:
        """Let the free buffers go if none has been in use for ``idle`` seconds; else look again later."""
        with self._lock:
            self._timer = None
            if self._out:
                return  # the put that brings it to 0 again starts a new timer
            left = self._idle_since + self.idle - time.monotonic()
            if left > 0:
                self._timer = threading.Timer(left, self._trim)
                self._timer.daemon = True
                self._timer.start()
                return
            self._free.clear()

    @property
    def held(self) -> int:
        """Bytes of the free buffers kept for reuse."""
        with self._lock:
            return sum(len(b) for b in self._free)
