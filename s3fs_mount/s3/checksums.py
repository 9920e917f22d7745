"""Checking what S3 sends against what S3 stored: an object's checksum, or the MD5s of its ETag.

What an object's bytes hash to is written as :attr:`ObjectInfo.digest
<s3fs_mount.s3.store.ObjectInfo.digest>` writes it: its ``x-amz-checksum-*``
when it has one (``CRC32:NhCmhg==``, or ``CRC32:...-n`` for a multipart
object: the checksum of its parts' checksums), else its ETag, which is the
MD5 of its bytes when it was written in one PUT (``MD5:...``) or
``MD5(MD5(part 1) + ... + MD5(part n))-n`` when it was written in parts
(``MD5-of-parts:...-n``). A CRC32 (ISA-L's) is thirty times cheaper to compute
here than an MD5, so it is used when there is one. Servers that encrypt with KMS or a
customer key give ETags that are no MD5: such objects without a checksum
are not checked (nor CRC32C and CRC64NVME ones where awscrt is missing). A reader's bytes
arrive in ranged GETs, in parallel and out of order; a :class:`Verifier`
hashes them in order as they come (pieces that arrive early wait, by
reference, for the ones before), part by part, and when the last byte is in
compares the result with the ETag. Pieces are fed before any reader gets
them, so the read that completes the object sees the verdict
(:attr:`Verifier.state`): a mismatch is EIO there.

What is checked: every object read from its first byte to its last through
one open file, whether streamed to the reader or fetched into the cache, and
random reads once they have fetched the whole object (a small one is fetched
whole at the first). What is not: a read of only some of a large object (S3
gives no digest of a range or, for other clients' objects, of a part).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any

from s3fs_mount.s3.errors import RemoteStoreError
from s3fs_mount.s3.parts import PartLayout

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


try:  # ISA-L's CRC32: 25 GB/s here against zlib's 2.2 (README.rst, "Dependencies")
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # a platform without its wheels: the same values, ten times the CPU
    _crc32 = zlib.crc32


class _Crc:
    """A CRC function with hashlib's update/digest (big-endian, as S3 encodes it).

    :param function: ``function(data, previous) -> int``, as zlib's ``crc32``.
    :param width: the CRC's bytes (4 for CRC32 and CRC32C, 8 for CRC64NVME).
    """

    def __init__(self, function: Callable[[bytes | memoryview, int], int], width: int) -> None:
        self.function, self.width, self.value = function, width, 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = self.function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width, "big")


#: Algorithm (as :func:`plan` names it) -> a new hash object.
_HASHES: dict[str, Callable[[], Any]] = {
    "MD5": hashlib.md5,
    "MD5-of-parts": hashlib.md5,
    "CRC32": functools.partial(_Crc, _crc32, 4),
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
}
try:  # AWS's CRT: CRC32C, and CRC64NVME, which AWS stores with every object since 2025 (8 GB/s)
    from awscrt.checksums import crc32c, crc64nvme

    _HASHES["CRC32C"] = functools.partial(_Crc, crc32c, 4)
    _HASHES["CRC64NVME"] = functools.partial(_Crc, crc64nvme, 8)
except ImportError:  # without it such objects are read unchecked, as plan() says
    log.info("awscrt is not installed: objects with only a CRC32C or CRC64NVME are not checked")


def plan(digest: str) -> tuple[str, int] | None:
    """``'CRC32:NhCmhg==-3'`` -> ``('CRC32', 3)``: the algorithm and the number of parts, or None
    when this digest cannot be checked here."""
    algorithm, _, value = digest.partition(":")
    if algorithm not in _HASHES or not value:
        return None
    if algorithm == "MD5":
        return (algorithm, 1) if _SINGLE.match(value) else None
    if algorithm == "MD5-of-parts":
        found = _MULTI.match(value)
        return (algorithm, int(found.group(1))) if found else None
    body, sep, count = value.rpartition("-")
    if sep and count.isdigit():
        return algorithm, int(count)
    return algorithm, 1


def _written(algorithm: str, digests: Sequence[bytes]) -> str:
    """The digest notation of bytes whose parts hash to ``digests`` (one: the whole)."""
    if algorithm == "MD5":
        return "MD5:" + digests[0].hex()
    if algorithm == "MD5-of-parts":
        return "MD5-of-parts:" + composite(digests)
    if len(digests) == 1:
        return "%s:%s" % (algorithm, base64.b64encode(digests[0]).decode())
    whole = _HASHES[algorithm]()
    whole.update(b"".join(digests))
    return "%s:%s-%d" % (algorithm, base64.b64encode(whole.digest()).decode(), len(digests))


def body_checksum(data: bytes | memoryview, algorithm: str | None) -> tuple[dict[str, str], str]:
    """The header that makes the server check a body, and the body's digest in our notation.

    ``algorithm`` ``'CRC32'``: ``x-amz-checksum-crc32`` (S3 stores it, and reads check it six
    times cheaper than an MD5); None: ``Content-MD5``. One pass over the bytes either way.
    """
    if algorithm == "CRC32":
        value = base64.b64encode(_crc32(data).to_bytes(4, "big")).decode()
        return {"x-amz-checksum-crc32": value}, "CRC32:" + value
    md5 = hashlib.md5(data).digest()
    return {"Content-MD5": base64.b64encode(md5).decode()}, "MD5:" + md5.hex()


def digest_of_bytes(algorithm: str, chunks: Iterable[bytes]) -> str:
    """The digest (our notation, one part) of the bytes in ``chunks``, by ``algorithm``."""
    h = _HASHES[algorithm]()
    for chunk in chunks:
        h.update(chunk)
    return _written(algorithm, [h.digest()])


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

        >>> v = Verifier('k', 'MD5-of-parts:' + etag, size, part_size=8 << 20)
        >>> v.feed(8 << 20, [b'...'])  # pieces in any order, each fed before a reader gets it
        >>> v.feed(0, [b'...'])
        >>> v.state                    # 'verified' once the last byte is in

    :param expected: what the bytes must hash to, as :func:`plan` reads it.
    :param part_size: the size of every part but the last (multipart objects), or the parts'
        :class:`~s3fs_mount.s3.parts.PartLayout` when they differ; the whole size else.

    Two locks, taken in this order: ``_hashing`` is held while bytes are hashed (one piece at a
    time, in order), ``_lock`` only for moments, so that feeders, :meth:`wait` and :attr:`state`
    never wait behind a hash of megabytes (they did: every GET thread queued behind the hasher).
    """

    def __init__(
        self,
        key: str,
        expected: str,
        size: int,
        part_size: int | PartLayout,
        hasher: Executor | None = None,
    ) -> None:
        found = plan(expected)
        if found is None:
            raise ValueError("cannot check a digest %r" % expected)
        self.key, self.expected, self.size = key, expected, size
        self.algorithm, self.parts = found
        if not isinstance(part_size, PartLayout):
            part_size = PartLayout(part_size if part_size > 0 else max(size, 1))
        self.layout = part_size
        #: Where the hashing runs (one thread: pieces are taken in the order fed); None: in feed.
        self.hasher = hasher
        self._lock = threading.Condition()
        self._queued = 0  # pieces fed to the hasher, not hashed yet. Guarded by _lock.
        self._queued_bytes = 0  # ... and their bytes. Guarded by _lock.
        self._state = PENDING if size else UNCHECKED  # Written with both locks held; read with either.
        self._hashing = threading.Lock()
        self._hashed = 0  # bytes hashed, from the start. Guarded by _hashing.
        self._part = _HASHES[self.algorithm]()  # the part being hashed. Guarded by _hashing.
        self._part_end = min(self.layout.size(1), size)  # Guarded by _hashing.
        self._digests: list[bytes] = []  # Guarded by _hashing.
        self._waiting: dict[int, list[bytes]] = {}  # start -> blocks that came early. Guarded by _hashing.
        self._waiting_bytes = 0  # Guarded by _hashing.
        self.got = ""  # the digest of the bytes, once MISMATCH. Guarded by _hashing.

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
        with self._hashing:
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
        """Hash what of ``blocks`` (at ``start`` <= _hashed) is new (caller holds ``_hashing``)."""
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
                        self._part = _HASHES[self.algorithm]()
                        self._part_end = min(self.layout.start(len(self._digests) + 2), self.size)
            pos = end
        if self._hashed >= self.size:
            self._finish()

    def _finish(self) -> None:
        got = _written(self.algorithm, self._digests)
        if got == self.expected:
            self._set_state(VERIFIED)
            log.debug("read of %s verified (%s)", self.key, got)
        else:
            self.got = got
            self._set_state(MISMATCH)
            log.error(
                "%s: the bytes S3 sent do not match what it stored: they hash to %s, S3 has %s",
                self.key,
                got,
                self.expected,
            )
        self._waiting.clear()
        self._waiting_bytes = 0

    def _set_state(self, state: str) -> None:
        """The verdict (caller holds ``_hashing``); feeders waiting for room stop waiting."""
        with self._lock:
            self._state = state
            self._lock.notify_all()

    def _give_up(self, why: str) -> None:
        self._set_state(UNCHECKED)
        self._waiting.clear()
        self._waiting_bytes = 0
        log.debug("read of %s not verified: %s", self.key, why)

    @property
    def state(self) -> str:
        """PENDING (bytes still to come), VERIFIED, MISMATCH, or UNCHECKED (gave up)."""
        with self._lock:
            return self._state
