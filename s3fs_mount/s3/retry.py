"""The one retry policy of the connector.

Retries connection errors, timeouts, 500/502/503/504 and SlowDown with
exponential backoff and full jitter, bounded both in attempts and in total
time. Never retries any other 4xx: those are answers, not accidents.

The requests of one job (the parts of one multipart upload; a lookup's HEAD and the LIST
beside it) may share a :class:`GiveUp`: once one of them fails for good, the others stop
retrying and those not begun are not sent.

The requests of one connection share an :class:`Outage`, a circuit breaker: once S3 cannot be
reached (a request's retries all spent on refused or broken connections), one request a second
is sent, once, not retried, and the others wait for its outcome, until S3 answers again; the log
says so twice, when S3 is lost and when it is back, not once a retry.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.s3.checksums import ChecksumMismatch
from s3fs_mount.s3.errors import BodyBroken, ConnectionFailed, GaveUp, S3Error, TransportError, Unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between the requests sent while S3 is unreachable (:class:`Outage`): the others fail unsent.
PROBE_EVERY = 1.0
#: Seconds a request's failures to reach S3 must have spanned, its retries spent, to open the
#: :class:`Outage`: a shorter run of them (a policy of few, quick retries) is no outage.
OUTAGE_AFTER = 1.0
#: Seconds a request waits at most, while S3 is unreachable, for the next probe's outcome (the
#: probe is due within ``PROBE_EVERY``; more only if it hangs): then it fails unsent.
PROBE_WAIT_MOST = 2 * PROBE_EVERY
#: Requests that may wait so at once; the others fail unsent at once. libfuse has 16 threads
#: (operations.MAX_FUSE_THREADS): an outage must not hold them all, a read of a cached file or
#: an unmount would wait behind them.
MAX_WAITING = 8
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


def is_unreachable(exc: BaseException) -> bool:
    """True for a failure to reach S3 at all (refused, reset or closed before an answer), not
    an answer of S3's, an answer cut short, nor one that did not come in time (a slow server,
    or a long server-side copy, is not a lost one; and each such try is bounded by its wait)."""
    return isinstance(exc, ConnectionFailed) and not isinstance(exc, BodyBroken)


class Outage:
    """Whether S3 can be reached, as the requests of one connection found: a circuit breaker.

    Closed (S3 answers): each request is retried as its policy says. A request whose retries
    are all spent on failures to reach S3 (:func:`is_unreachable`) over ``OUTAGE_AFTER`` s or
    more opens it, with one WARNING line. While open, one request a ``probe_every`` s is sent,
    once, not retried (the probe); the others wait for the outcome of the next probe (at most
    ``wait_most`` s, at most ``max_waiting`` of them at once: the rest fail at once) and are
    then sent if S3 answered it, else fail unsent (:class:`~s3fs_mount.s3.errors.Unreachable`);
    a request between its tries when it opens is not sent again; every failure is marked
    ``in_outage`` (its caller logs it quietly). So an outage costs about
    a request a second, whatever the callers do, a lookup fails with EIO within about a second,
    not after seconds of backoff, and none fails once S3 is back: the first lookup after it is
    the probe that finds it (before round 38 the lookups failed unsent at once until the next
    probe, up to a second of EIO after S3 was back). Measured before the breaker (bench/README.md,
    round 37): a stat loop during a 20 s outage sent 7.2 requests a second and logged 132
    WARNING lines. Any answer of S3's closes it, with one WARNING line saying how long S3 was
    away and how many requests failed meanwhile.
    """

    def __init__(
        self,
        clock: Clock = SYSTEM,
        probe_every: float = PROBE_EVERY,
        wait_most: float = PROBE_WAIT_MOST,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._clock = clock  # immutable (as the three below)
        self._every = probe_every
        self._wait_most = wait_most
        self._max_waiting = max_waiting
        self._lock = threading.Lock()
        #: Notified when a probe ends and when the breaker closes (on _lock).
        self._changed = threading.Condition(self._lock)
        self._since: float | None = None  # GUARDED_BY(_lock): when S3 was lost (monotonic); None: it answers
        self._failed = 0  # GUARDED_BY(_lock): requests failed since
        self._cause = ""  # GUARDED_BY(_lock): the failure that opened it
        self._reason = ""  # GUARDED_BY(_lock): its reason (TransportError.reason)
        self._probed = 0.0  # GUARDED_BY(_lock): when the last probe was sent (monotonic)
        #: GUARDED_BY(_lock): a probe is under way: the next waits for its outcome (unless it
        #: hangs, past ``wait_most``)
        self._probing = False
        self._probes_ended = 0  # GUARDED_BY(_lock): probes over, ever (a waiter's outcome came)
        self._probes = 0  # GUARDED_BY(_lock): probes sent since S3 was lost (for status)
        self._waiting = 0  # GUARDED_BY(_lock): requests waiting for a probe's outcome
        #: Per thread: ``probing`` while this thread's call is the probe, so that the request it
        #: nests (a read's fetch around its GET) is sent too.
        self._local = threading.local()

    @property
    def down(self) -> bool:
        """Is S3 known to be unreachable (the breaker open)?"""
        with self._lock:
            return self._since is not None

    @property
    def waiting(self) -> int:
        """Requests waiting for a probe's outcome now."""
        with self._lock:
            return self._waiting

    def may_probe(self, what: str, change: bool = False, give_up: GiveUp | None = None) -> bool:
        """May ``what`` be sent? Yes while S3 answers (False: not the probe). While open: True
        if it is the probe (end it with :meth:`end_probe`); else it waits for the next probe's
        outcome, and is sent (False) if S3 answered it, else raises Unreachable, counted; so
        does a request that finds ``max_waiting`` waiting, or waits ``wait_most`` s (a probe that
        hangs). A ``change`` (a write or delete someone waits on: fsync, sync, a close) is sent
        while open too, at once and once (its failure is not retried): the first second after S3
        is back must not fail every upload a ``sync`` asks for. ``give_up``: the job of ``what``;
        given up while it waited, it is not the probe (GaveUp): a probe is a request someone waits on."""
        if getattr(self._local, "probing", False):
            return False  # within this thread's probe
        ahead = sent_ahead()
        with self._lock:
            if self._since is None or change:
                return False
            if ahead:
                self._failed += 1
                cause, reason = self._cause, self._reason
                raise Unreachable(what, cause, reason)  # (ahead_of_need)
            now = self._clock.monotonic()
            deadline, ended = now + self._wait_most, self._probes_ended
            waits = False  # counted in _waiting
            try:
                while self._since is not None and self._probes_ended == ended and now < deadline:
                    since = now - self._probed
                    if since >= self._every and (not self._probing or since >= self._wait_most):
                        if give_up is not None and give_up.cause is not None:
                            break  # (GaveUp, below)
                        self._probed, self._probing = now, True
                        self._probes += 1
                        self._local.probing = True
                        return True
                    if not waits:
                        if self._waiting >= self._max_waiting:
                            break
                        self._waiting, waits = self._waiting + 1, True
                    due = self._probed + (self._wait_most if self._probing else self._every)
                    self._changed.wait(max(0.0, min(due, deadline) - now))
                    now = self._clock.monotonic()
            finally:
                if waits:
                    self._waiting -= 1
            if self._since is None:
                return False  # S3 answered while it waited: sent as usual (unless given up: call)
            if give_up is None or give_up.cause is None:
                self._failed += 1
            cause, reason = self._cause, self._reason
        if give_up is not None:
            give_up.check(what)  # its job given up meanwhile: not the outage's failure
        raise Unreachable(what, cause, reason)

    def end_probe(self) -> None:
        """This thread's probe is over (its outcome told by :meth:`lost` or :meth:`answered`)."""
        self._local.probing = False
        with self._lock:
            self._probing = False
            self._probes_ended += 1
            self._changed.notify_all()

    def lost(self, exc: BaseException) -> None:
        """A request failed for good to reach S3 (``exc``): open, or count one more failure;
        ``exc`` is marked ``in_outage``: the log has said it."""
        with self._lock:
            opened = self._since is None
            if opened:
                self._since = self._probed = self._clock.monotonic()
                self._failed, self._probes, self._cause = 0, 0, str(exc)
                self._reason = getattr(exc, "reason", str(exc))
            if not getattr(exc, "in_outage", False):  # a nested call's failure is seen twice
                self._failed += 1
            exc.in_outage = True  # type: ignore[attr-defined]
        if opened:
            log.warning(
                "S3 is unreachable (%s): requests fail at once, one a %.0f s sent to see whether it is back",
                str(exc),
                PROBE_EVERY,
            )

    def answered(self) -> None:
        """S3 answered a request (any answer): close."""
        with self._lock:
            if self._since is None:
                return
            away, failed = self._clock.monotonic() - self._since, self._failed
            self._since = None
            self._changed.notify_all()
        log.warning("S3 answers again, after %.1f s unreachable: %d requests failed meanwhile", away, failed)

    def summary(self) -> str:
        """For ``s3fs-mount status``: '' while S3 answers."""
        with self._lock:
            if self._since is None:
                return ""
            return "S3 unreachable for %.0f s (%d requests failed since, not retried; %d probes sent): %s" % (
                self._clock.monotonic() - self._since,
                self._failed,
                self._probes,
                self._cause,
            )


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

    def __init__(self, loud: bool = True) -> None:
        #: Whether a request that gives the job up says so (WARNING): an upload's parts do; a
        #: lookup's LIST, given up once its HEAD failed (fs/namespace.py), does not (the lookup does).
        self.loud = loud  # immutable
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


#: Per thread: ``give_up``, the job of the requests this thread sends now (:func:`within`);
#: ``ahead``, True while this thread's requests are sent ahead of need (:func:`ahead_of_need`).
_jobs = threading.local()


@contextlib.contextmanager
def ahead_of_need(ahead: bool = True) -> Iterator[None]:
    """The requests this thread sends in the block are sent ahead of need (the stat-ahead's
    HEADs, rm -r's next directory looked up ahead), for a caller that asks again itself if one
    fails: while S3 is unreachable they fail at once, unsent (never the probe, never waiting for
    its outcome): the ``MAX_WAITING`` places are for requests someone waits on (before round 39
    a walk's stat-ahead could take them all, and a user's lookup failed at once)."""
    outer = getattr(_jobs, "ahead", False)
    _jobs.ahead = ahead or outer
    try:
        yield
    finally:
        _jobs.ahead = outer


def sent_ahead() -> bool:
    """Is this thread sending ahead of need now (:func:`ahead_of_need`)?"""
    return getattr(_jobs, "ahead", False)


@contextlib.contextmanager
def within(job: GiveUp | None) -> Iterator[None]:
    """The requests this thread sends in the block are parts of ``job`` (as ``give_up=job``
    would make them), through layers that pass no job down (a lookup's LIST, sent by the
    store's ``list``, given up once the lookup's HEAD failed: fs/namespace.py). None: of none."""
    outer = getattr(_jobs, "give_up", None)
    _jobs.give_up = job
    try:
        yield
    finally:
        _jobs.give_up = outer


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
    #: Whether S3 can be reached, shared by every call (made with the policy unless given).
    outage: Outage = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock)

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after the failed ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def call(
        self,
        fn: Callable[[], T],
        what: str = "request",
        retryable: Callable[[BaseException], bool] = is_retryable,
        give_up: GiveUp | None = None,
        change: bool = False,
    ) -> T:
        """Run ``fn`` until it succeeds, or raise its last exception. ``retryable``: which
        failures are tried again (by default, those worth it: :func:`is_retryable`).
        ``give_up``: the job ``fn`` is part of; a failure for good gives it up, and once it is
        given up ``fn`` is not run (GaveUp) nor run again (its last failure is raised).
        ``change``: ``fn`` writes or deletes: sent even while S3 is unreachable, once
        (:meth:`Outage.may_probe`). Sent :func:`within` a job, ``give_up`` is that job by default."""
        if give_up is None:
            give_up = getattr(_jobs, "give_up", None)
        if give_up is not None:
            give_up.check(what)
        probe = self.outage.may_probe(what, change, give_up)
        try:
            if give_up is not None and not probe:
                give_up.check(what)  # given up while it waited for a probe's outcome
            return self._attempts(fn, what, retryable, give_up)
        finally:
            if probe:
                self.outage.end_probe()

    def _attempts(
        self,
        fn: Callable[[], T],
        what: str,
        retryable: Callable[[BaseException], bool],
        give_up: GiveUp | None,
    ) -> T:
        """:meth:`call`'s attempts: until one succeeds, or the policy or the outage stops them."""
        outage = self.outage
        start = self.clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except Exception as exc:
                if give_up is not None and give_up.cause is not None:
                    raise  # another request of the job failed for good: no retry, no line
                unreachable = is_unreachable(exc)
                if not unreachable and isinstance(exc, S3Error):
                    outage.answered()
                elif unreachable and outage.down:  # the breaker is open: no retry, no line
                    outage.lost(exc)
                    raise
                pause = self.delay(attempt) if retryable(exc) and attempt < self.max_attempts else None
                if pause is None or self.clock.monotonic() - start + pause > self.max_total:
                    if unreachable and self.clock.monotonic() - start >= OUTAGE_AFTER:
                        outage.lost(exc)
                    if give_up is not None and give_up.fail(exc) and give_up.loud:
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
                # retries are told once, if it gives up (many parts retry at once); S3 out of
                # reach is told once by the outage, if the retries are all spent.
                log.log(
                    logging.INFO if give_up is not None or unreachable else logging.WARNING,
                    "%s failed (%s); retry %d in %.2fs",
                    what,
                    str(exc),
                    attempt,
                    pause,
                )
                self.clock.sleep(pause)
                if give_up is not None and give_up.cause is not None:
                    raise  # given up while this one waited
                if unreachable and outage.down:
                    # S3 was found lost while this one waited (another request's retries spent):
                    # not sent again, as none is but the probe (before, a lookup's LIST beside its
                    # HEAD went once more after the HEAD had opened the breaker).
                    outage.lost(exc)
                    raise
            else:
                outage.answered()
                return result
