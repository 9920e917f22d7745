"""Checking what S3 sends against what S3 stored: the MD5s behind an object's ETag.

An object's ETag is the MD5 of its bytes when it was written in one PUT, or
``MD5(MD5(part 1) + ... + MD5(part n))-n`` when it was written in parts
(servers that encrypt with KMS or a customer key, and some others, give
ETags that are neither: those objects are not checked). A reader's bytes
arrive in ranged GETs, in parallel and out of order; a :class:`Verifier`
hashes them in order as they come (pieces that arrive early wait, by
reference, for the ones before), part by part, and when the last byte is in
compares the result with the ETag. Pieces are fed before any reader gets
them, so the read that completes the object sees the verdict
(:attr:`Verifier.state`): a mismatch is EIO there.

What is checked: every object read from its first byte to its last through
one open file, whether streamed to the reader or fetched into the cache.
What is not: a read of only some of an object (the ETag covers it whole).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Executor

from s3fs_mount.s3.errors import RemoteStoreError

log = logging.getLogger(__name__)

#: Bytes of early pieces a verifier keeps waiting for the ones before; past it, it gives up.
MAX_WAITING = 64 << 20

_SINGLE = re.compile(r"^[0-9a-f]{32}$")
_MULTI = re.compile(r"^[0-9a-f]{32}-(\d+)$")

#: Verdicts.
PENDING, VERIFIED, MISMATCH, UNCHECKED = "pending", "verified", "mismatch", "unchecked"


class ChecksumMismatch(RemoteStoreError):
    """What S3 sent is not what it stored: the digest of the bytes differs from the ETag's.

    Retried by the retry policy, as any other fault on the way."""

    def __init__(self, key: str, expected: str, got: str) -> None:
        super().__init__("%s: bytes read have digest %s, S3 stored %s" % (key, got, expected))
        self.key, self.expected, self.got = key, expected, got


def parts_of(etag: str) -> int | None:
    """1 for a single-PUT ETag, n for a multipart one, None for an ETag that is no MD5."""
    if _SINGLE.match(etag):
        return 1
    found = _MULTI.match(etag)
    return int(found.group(1)) if found else None


def composite(digests: Sequence[bytes]) -> str:
    """The ETag of an object whose parts have these MD5 digests."""
    return "%s-%d" % (hashlib.md5(b"".join(digests)).hexdigest(), len(digests))


class Verifier:
    """Hashes one version of one object in order as its bytes arrive; compares at the end.

    ::

        >>> v = Verifier('k', etag, size, part_size=8 << 20)
        >>> v.feed(8 << 20, [b'...'])  # pieces in any order, each fed before a reader gets it
        >>> v.feed(0, [b'...'])
        >>> v.state                    # 'verified' once the last byte is in

    :param part_size: the size of every part but the last (multipart ETags); the whole size else.
    Every field below is guarded by ``_lock``.
    """

    def __init__(
        self, key: str, etag: str, size: int, part_size: int, hasher: Executor | None = None
    ) -> None:
        self.key, self.etag, self.size = key, etag, size
        self.part_size = part_size if part_size > 0 else max(size, 1)
        #: Where the hashing runs (one thread: pieces are taken in the order fed); None: in feed.
        self.hasher = hasher
        self._lock = threading.Condition()
        self._queued = 0  # pieces fed to the hasher, not hashed yet
        self._queued_bytes = 0  # ... and their bytes
        self._hashed = 0  # bytes hashed, from the start
        self._part = hashlib.md5()  # the part being hashed
        self._part_end = min(self.part_size, size)
        self._digests: list[bytes] = []
        self._waiting: dict[int, list[bytes]] = {}  # start -> blocks that came early
        self._waiting_bytes = 0
        self._state = PENDING if size else UNCHECKED
        self.got = ""  # the digest of the bytes, once MISMATCH

    def feed(self, start: int, blocks: Sequence[bytes]) -> None:
        """Bytes ``start..`` arrived. Call it before any reader sees them; with a ``hasher`` it
        returns at once (the reader need not wait for the hash) and :meth:`wait` waits for it."""
        if self.hasher is None:
            self._hash(start, blocks)
            return
        length = sum(len(b) for b in blocks)
        with self._lock:
            # Bytes waiting for the hasher stay in memory: past MAX_WAITING, readers wait for it.
            self._lock.wait_for(lambda: self._queued_bytes < MAX_WAITING or self._state != PENDING, 60)
            if self._state != PENDING:
                return
            self._queued += 1
            self._queued_bytes += length
        self.hasher.submit(self._hash_queued, start, blocks, length)

    def _hash_queued(self, start: int, blocks: Sequence[bytes], length: int) -> None:
        try:
            self._hash(start, blocks)
        finally:
            with self._lock:
                self._queued -= 1
                self._queued_bytes -= length
                self._lock.notify_all()

    def wait(self, timeout: float = 60.0) -> str:
        """The state once every piece fed so far is hashed (or ``timeout`` s have passed)."""
        with self._lock:
            self._lock.wait_for(lambda: self._queued <= 0, timeout)
            return self._state

    def _hash(self, start: int, blocks: Sequence[bytes]) -> None:
        """Hash what of ``blocks`` (at ``start``) can be hashed now; keep the rest waiting."""
        with self._lock:
            if self._state != PENDING:
                return
            length = sum(len(b) for b in blocks)
            if start > self._hashed:
                if start not in self._waiting:
                    self._waiting[start] = list(blocks)
                    self._waiting_bytes += length
                    if self._waiting_bytes > MAX_WAITING:
                        self._give_up("too many bytes read ahead of a gap")
                return
            self._take(start, blocks)
            while self._state == PENDING and self._hashed in self._waiting:
                later = self._waiting.pop(self._hashed)
                self._waiting_bytes -= sum(len(b) for b in later)
                self._take(self._hashed, later)
            # Early pieces now behind us (overlapping ranges) are of no use.
            for s in [s for s in self._waiting if s < self._hashed]:
                self._waiting_bytes -= sum(len(b) for b in self._waiting.pop(s))

    def _take(self, start: int, blocks: Sequence[bytes]) -> None:
        """Hash what of ``blocks`` (at ``start`` <= _hashed) is new (caller holds the lock)."""
        pos = start
        for block in blocks:
            end = pos + len(block)
            if end > self._hashed:
                view = memoryview(block)[self._hashed - pos :]
                while len(view) and self._hashed < self.size:
                    n = min(len(view), self._part_end - self._hashed)
                    self._part.update(view[:n])
                    view = view[n:]
                    self._hashed += n
                    if self._hashed == self._part_end:
                        self._digests.append(self._part.digest())
                        self._part = hashlib.md5()
                        self._part_end = min(self._part_end + self.part_size, self.size)
            pos = end
        if self._hashed >= self.size:
            self._finish()

    def _finish(self) -> None:
        n = parts_of(self.etag)
        got = self._digests[0].hex() if n == 1 and len(self._digests) == 1 else composite(self._digests)
        if got == self.etag:
            self._state = VERIFIED
            log.debug("read of %s verified (%s)", self.key, "MD5" if n == 1 else "MD5 of %d parts" % n)
        else:
            self._state = MISMATCH
            self.got = got
            log.error(
                "%s: the bytes S3 sent do not match what it stored: digest %s, ETag %s",
                self.key,
                got,
                self.etag,
            )
        self._waiting.clear()
        self._waiting_bytes = 0

    def _give_up(self, why: str) -> None:
        self._state = UNCHECKED
        self._waiting.clear()
        self._waiting_bytes = 0
        log.debug("read of %s not verified: %s", self.key, why)

    @property
    def state(self) -> str:
        """PENDING (bytes still to come), VERIFIED, MISMATCH, or UNCHECKED (gave up)."""
        with self._lock:
            return self._state
