"""The one retry policy of the connector.

Retries connection errors, timeouts, 500/502/503/504 and SlowDown with
exponential backoff and full jitter, bounded both in attempts and in total
time. Never retries any other 4xx: those are answers, not accidents.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.s3.checksums import ChecksumMismatch
from s3fs_mount.s3.errors import S3Error, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
#: BadDigest / XAmzContentSHA256Mismatch: the bytes changed on the way (the server checked): send again.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "BadDigest",
        "XAmzContentSHA256Mismatch",
    }
)


def is_retryable(exc: BaseException) -> bool:
    """True for the failures worth trying again."""
    if isinstance(exc, S3Error):
        return exc.status in RETRYABLE_STATUS or exc.code in RETRYABLE_CODES
    if isinstance(exc, TransportError):
        return exc.retryable
    return isinstance(exc, ChecksumMismatch)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter.

    ``max_attempts`` counts the first try; ``max_total`` bounds the seconds
    spent from the first try to the start of the last one.
    """

    max_attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0
    max_total: float = 60.0
    retries: int = 0  # counter, for the unmount summary
    #: What the backoff sleeps on and the total is measured by (tests give a fake one).
    clock: Clock = field(default=SYSTEM, repr=False, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after the failed ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def call(
        self,
        fn: Callable[[], T],
        what: str = "request",
        retryable: Callable[[BaseException], bool] = is_retryable,
    ) -> T:
        """Run ``fn`` until it succeeds, or raise its last exception. ``retryable``: which
        failures are tried again (by default, those worth it: :func:`is_retryable`)."""
        start = self.clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not retryable(exc) or attempt >= self.max_attempts:
                    raise
                pause = self.delay(attempt)
                if self.clock.monotonic() - start + pause > self.max_total:
                    raise
                self.retries += 1
                # The text, not the exception: its frames hold the request's body, and a handler
                # may keep a record (a queue, pytest's capture) long after the retry.
                log.warning("%s failed (%s); retry %d in %.2fs", what, str(exc), attempt, pause)
                self.clock.sleep(pause)
