"""A bounded mapping whose entries expire, each at its own time: the namespace's caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class ExpiringLRU(Generic[K, V]):
    """At most ``maxsize`` entries, least recently used dropped first; each entry is gone once
    its time (``ttu(key, value, now)``, asked when it is set) has come.

    cachetools' ``TLRUCache`` keeps the same promise with a heap of expiry times, which costs
    a push, and pops, per entry set: a walk of a large directory sets one per entry, and that
    heap was a third of its CPU. Here an entry's time is checked when it is read, and an
    expired one is dropped then (or when it is the least recently used), so memory is bounded
    by ``maxsize`` all the same, and a set is a dict store and a move.

    ``len()`` and ``keys()`` count entries not yet dropped, expired or not. Not thread-safe:
    its owner's lock guards it.

    :param maxsize: the most entries kept (at least 1).
    :param ttu: when an entry set at ``now`` expires (the timer's unit).
    :param timer: the time now (e.g. ``time.monotonic``).
    """

    def __init__(self, maxsize: int, ttu: Callable[[K, V, float], float], timer: Callable[[], float]) -> None:
        self.maxsize = max(1, maxsize)
        self._ttu = ttu
        self._timer = timer
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default`` if none or expired."""
        item = self._data.get(key)
        if item is None:
            return default
        if not self._timer() < item[1]:
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return item[0]

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        item = self._data.get(key)  # type: ignore[call-overload]
        return item is not None and self._timer() < item[1]

    def __setitem__(self, key: K, value: V) -> None:
        now = self._timer()
        expires = self._ttu(key, value, now)
        if not now < expires:
            return  # expired already: not kept (as cachetools' TLRUCache does)
        data = self._data
        data[key] = (value, expires)
        data.move_to_end(key)
        if len(data) > self.maxsize:
            data.popitem(last=False)

    def trim(self, most: int = 2) -> None:
        """Drop up to ``most`` of the least recently used entries that have expired (a cache
        set far more often than read stays near the entries still live, not at ``maxsize``)."""
        data = self._data
        now = self._timer()
        for _ in range(most):
            if not data:
                return
            key = next(iter(data))
            if now < data[key][1]:
                return
            del data[key]

    def demote(self, key: K) -> None:
        """``key`` is now the least recently used: the first dropped when room is needed."""
        if key in self._data:
            self._data.move_to_end(key, last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key``; its value if it had one not expired, else ``default``."""
        item = self._data.pop(key, None)
        if item is None or not self._timer() < item[1]:
            return default
        return item[0]

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[K]:
        """The keys held (some may have expired)."""
        return list(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())


def ttl_cache(maxsize: int, ttl: float, timer: Callable[[], float]) -> ExpiringLRU[K, V]:
    """An :class:`ExpiringLRU` whose every entry lasts ``ttl`` from when it was set: what
    cachetools' ``TTLCache`` keeps, without its expiry bookkeeping on each call (its ``get``,
    ``pop``, ``in`` and ``len`` first expire what is due, under a timer context: 2-7 us a call
    where this takes 0.4-0.7; a readdir handing out entries whole asks several a file)."""
    return ExpiringLRU(maxsize, lambda key, value, now: now + ttl, timer)


def own_ttl(key: object, ttl: float, now: float) -> float:
    """The ``ttu`` of an :class:`ExpiringLRU` whose values are their own lifetimes (seconds)."""
    return now + ttl
