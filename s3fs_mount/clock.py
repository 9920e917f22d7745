"""The clock: what TTLs, backoff and new files' times are measured by.

Code that waits or expires takes a :class:`Clock` (default :data:`SYSTEM`), so
tests move time on instead of sleeping::

    >>> policy = RetryPolicy(clock=fake)     # backoff sleeps move the fake clock on
    >>> ns = Namespace(store, keymap, defaults, attr_ttl=1.0, clock=fake)
    >>> fake.advance(1.5)                    # every attribute cached above has expired
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Three readings of time, as the ``time`` module gives them."""

    def time(self) -> float:
        """Seconds since the epoch (file times)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (TTLs, deadlines)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic`, :func:`time.sleep`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


#: The clock everything uses unless a test gives another.
SYSTEM: Clock = SystemClock()
