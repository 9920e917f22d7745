"""A clock tests move on by hand: TTLs pass and backoff sleeps end at once."""

from __future__ import annotations

import threading
import time


class FakeClock:
    """The real clocks plus an offset that :meth:`advance` (and :meth:`sleep`) moves on.

    Time still passes as it does, so readings stay comparable with those of
    code that takes no clock (a staged file's times); but nothing waits.
    ``slept`` lists every sleep asked for.
    """

    def __init__(self, frozen: bool = False) -> None:
        #: With ``frozen``, real time does not pass on this clock, only :meth:`advance` moves it: for
        #: a test that steps close to a bound (0.9 of a TTL), which a loaded machine's real time
        #: between two steps would carry past it.
        self._base = (time.time(), time.monotonic()) if frozen else None
        self.offset = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()  # guards offset and slept

    def time(self) -> float:
        return (time.time() if self._base is None else self._base[0]) + self.offset

    def monotonic(self) -> float:
        return (time.monotonic() if self._base is None else self._base[1]) + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.offset += seconds
