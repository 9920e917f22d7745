"""The one retry policy of the connector.

Retries connection errors, timeouts, 500/502/503/504 and SlowDown with
exponential backoff and full jitter, bounded both in attempts and in total
time. Never retries any other 4xx: those are answers, not accidents.

The requests of one job (the parts of one multipart upload) may share a :class:`GiveUp`:
once one of them fails for good, the others stop retrying and those not begun are not sent.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.s3.checksums import ChecksumMismatch
from s3fs_mount.s3.errors import GaveUp, S3Error, TransportError

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


class GiveUp:
    """What the requests of one job (the parts of one multipart upload) share, so that they
    fail together: the first to fail for good (its retries spent, or a failure not retried)
    is the job's :attr:`cause`; after it, the others make no further attempt (each raises its
    own last failure, without a retry line) and a request not yet begun is not sent
    (:class:`~s3fs_mount.s3.errors.GaveUp`). Without it a full server's 500s were retried
    by every part in flight, and by every part queued after them: 880 MB sent for 100 MB.

    ::

        >>> job = GiveUp()
        >>> policy.call(send_part_1, "part 1", give_up=job)   # fails for good: job.cause
        >>> policy.call(send_part_2, "part 2", give_up=job)   # GaveUp: nothing sent
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cause: BaseException | None = None  # GUARDED_BY(_lock): set once

    @property
    def cause(self) -> BaseException | None:
        """The failure the job gave up on (None: not given up)."""
        with self._lock:
            return self._cause

    def fail(self, exc: BaseException) -> bool:
        """The job failed for good with ``exc``; True unless it had already (the first wins).
        A precondition's 412 (a copied part's source changed) is S3's answer about an object,
        not a failure of the job: the caller decides, and the other parts go on (False)."""
        if isinstance(exc, S3Error) and exc.precondition_failed:
            return False
        with self._lock:
            if self._cause is not None:
                return False
            self._cause = exc
            return True

    def check(self, what: str) -> None:
        """Raise :class:`~s3fs_mount.s3.errors.GaveUp` for ``what`` once the job is given up."""
        cause = self.cause
        if cause is not None:
            raise GaveUp(what, cause)


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
        give_up: GiveUp | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, or raise its last exception. ``retryable``: which
        failures are tried again (by default, those worth it: :func:`is_retryable`).
        ``give_up``: the job ``fn`` is part of; a failure for good gives it up, and once it is
        given up ``fn`` is not run (GaveUp) nor run again (its last failure is raised)."""
        if give_up is not None:
            give_up.check(what)
        start = self.clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if give_up is not None and give_up.cause is not None:
                    raise  # another request of the job failed for good: no retry, no line
                pause = self.delay(attempt) if retryable(exc) and attempt < self.max_attempts else None
                if pause is None or self.clock.monotonic() - start + pause > self.max_total:
                    if give_up is not None and give_up.fail(exc):
                        log.warning(
                            "%s failed for good after %d attempt(s) (%s): the other parts of its upload stop",
                            what,
                            attempt,
                            str(exc),
                        )
                    raise
                self.retries += 1
                # The text, not the exception: its frames hold the request's body, and a handler
                # may keep a record (a queue, pytest's capture) long after the retry. A job's
                # retries are told once, if it gives up (many parts retry at once).
                log.log(
                    logging.INFO if give_up is not None else logging.WARNING,
                    "%s failed (%s); retry %d in %.2fs",
                    what,
                    str(exc),
                    attempt,
                    pause,
                )
                self.clock.sleep(pause)
                if give_up is not None and give_up.cause is not None:
                    raise  # given up while this one waited
