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
hashes each part's bytes in order as they come (pieces that arrive early wait, by
reference, for the ones before), the parts side by side, and when the last byte is in
compares the result with the ETag. Pieces are fed before any reader gets
them, so the read that completes the object sees the verdict
(:attr:`Verifier.state`): a mismatch is EIO there.

What is checked: every object read from its first byte to its last through
one open file, whether streamed to the reader or fetched into the cache, and
random reads once they have fetched the whole object (a small one is fetched
whole at the first). A check of the whole that passed leaves what each aligned
piece of that version hashes to (:meth:`Verifier.pieces`: its parts' digests, or a
CRC32 of each :data:`CRC32_PIECE`), so a range of it fetched again later (pages
the kernel dropped) is fetched in whole pieces and each checked
(:class:`PieceDigests`). What is not: a read of only some of a large object never
read whole (S3 gives no digest of a range or, for other clients' objects, of a part).
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
from dataclasses import dataclass
from typing import Any

from s3fs_mount.s3.errors import RemoteStoreError
from s3fs_mount.s3.parts import AnyLayout, PartLayout

log = logging.getLogger(__name__)

#: Bytes of early pieces a verifier keeps waiting for the ones before; past it, it gives up.
MAX_WAITING = 64 << 20
#: Parts with bytes ready in the queue (:meth:`Verifier.feed_later`) that a feeder hashes side
#: by side: a vector's worth (AVX2). A reader's stream hashed each piece as its GET ended, one
#: part at a time: in one lane, no cheaper than hashlib (bench/README.md, round 40).
LANE_BATCH = 8
#: Bytes all verifiers together may keep queued (alive) unhashed: past it each feeder hashes
#: its own verifier's queue at once (several readers' queues, each under LANE_BATCH parts,
#: would otherwise keep MAX_WAITING each).
MAX_QUEUED = 64 << 20


class _QueuedBytes:
    """The bytes queued unhashed over all verifiers (:meth:`Verifier.feed_later`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0  # GUARDED_BY(_lock)

    def add(self, n: int) -> int:
        """Count ``n`` more (or fewer, negative); the total now."""
        with self._lock:
            self._total += n
            return self._total


_QUEUED = _QueuedBytes()

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
    from isal.isal_zlib import crc32_combine as _crc32_combine
except ImportError:  # a platform without its wheels: the same values, ten times the CPU
    _crc32 = zlib.crc32
    _crc32_combine = None

try:  # MD5 of several parts at once in vector lanes (s3fs_mount/s3/_md5lanes.c, built by setup.py)
    from s3fs_mount.s3 import _md5lanes
except ImportError:  # not built (no compiler): each part's MD5 by hashlib, one at a time
    _md5lanes = None

#: The pieces a whole-object CRC32 is hashed in, side by side, then combined (:class:`Verifier`).
CRC32_PIECE = 8 << 20


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


class _LaneMD5:
    """An MD5 with hashlib's update/digest whose state :func:`_md5_side_by_side` can hash along
    with others' (the bytes of several parts in one pass of the vector lanes)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _md5lanes.new()

    def update(self, data: bytes | memoryview) -> None:
        _md5lanes.update_lanes([self.state], [data])

    def digest(self) -> bytes:
        return _md5lanes.digest(self.state)


def _md5_side_by_side(runs: Sequence[tuple[_LaneMD5, Sequence[memoryview]]]) -> None:
    """Hash each run's views, in order, into its MD5: the runs side by side, up to the lanes a
    vector holds at once (the GIL is let go meanwhile)."""
    for first in range(0, len(runs), _md5lanes.LANES):
        group = runs[first : first + _md5lanes.LANES]
        for i in range(max(len(views) for _, views in group)):
            ready = [(h.state, views[i]) for h, views in group if i < len(views)]
            _md5lanes.update_lanes([state for state, _ in ready], [view for _, view in ready])


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
        return crc32_checksum(_crc32(data))
    md5 = hashlib.md5(data).digest()
    return {"Content-MD5": base64.b64encode(md5).decode()}, "MD5:" + md5.hex()


def crc32_checksum(value: int) -> tuple[dict[str, str], str]:
    """:func:`body_checksum`'s answer for a body whose CRC32 is ``value`` (made as it was written)."""
    encoded = base64.b64encode(value.to_bytes(4, "big")).decode()
    return {"x-amz-checksum-crc32": encoded}, "CRC32:" + encoded


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """The CRC32 of ``data`` following bytes whose CRC32 is ``value`` (as zlib's, ISA-L's speed)."""
    return _crc32(data, value)


def digest_of_bytes(algorithm: str, chunks: Iterable[bytes]) -> str:
    """The digest (our notation, one part) of the bytes in ``chunks``, by ``algorithm``."""
    h = _HASHES[algorithm]()
    for chunk in chunks:
        h.update(chunk)
    return _written(algorithm, [h.digest()])


def crc32_of_parts(parts: Sequence[tuple[str, int]]) -> str:
    """The digest (``CRC32:...``, one part) of bytes whose consecutive pieces have these CRC32s
    (base64, as ``x-amz-checksum-crc32`` says) and lengths: what S3 stores as a FULL_OBJECT
    CRC32 of a multipart upload. '' when it cannot be told here (no ISA-L, or no pieces)."""
    if _crc32_combine is None or not parts:
        return ""
    value = 0
    for encoded, length in parts:
        value = _crc32_combine(value, int.from_bytes(base64.b64decode(encoded), "big"), length)
    return crc32_checksum(value)[1]


def whole(digest: str) -> bool:
    """Is ``digest`` (our notation) one of all the bytes, whatever parts they were stored in
    (``CRC32:...`` of a single PUT or of a FULL_OBJECT multipart upload, ``MD5:...``), not one
    of parts (``...-n``), which another layout of the same bytes does not share?"""
    found = plan(digest)
    return found is not None and found[1] == 1 and not digest.endswith("-1")


def same_bytes(size: int, digest: str, other_size: int, other_digest: str) -> bool:
    """Do two versions hold the same bytes, by what S3 says of them: equal sizes and equal
    whole-object digests (:func:`whole`). On AWS a CopyObject of an object uploaded in parts
    (a metadata change) gives it a new ETag but the same FULL_OBJECT CRC32, which S3 computes
    from the bytes it copied; ETags of parts, or digests of two algorithms, tell nothing: False.
    (A CRC32 is no proof against bytes made to match: one in 2**32 for bytes that changed.)"""
    return size == other_size and whole(digest) and digest == other_digest


def whole_crc32(digest: str) -> bool:
    """Is ``digest`` a CRC32 of all the bytes (:func:`whole`), which :func:`appended` can go on with?"""
    return digest.startswith("CRC32:") and whole(digest)


def appended(digest: str, added: Iterable[bytes | memoryview], other_digest: str) -> bool:
    """Does a version whose whole-object CRC32 is ``other_digest`` hold the bytes of one whose
    CRC32 is ``digest``, followed by ``added`` (an append: another client put the file again,
    longer)? A CRC32 goes on over more bytes, so only those past the old end are hashed; other
    digests cannot tell without all the old bytes: False. (As :func:`same_bytes`: no proof
    against bytes made to match.)"""
    if not (whole_crc32(digest) and whole_crc32(other_digest)):
        return False
    value = int.from_bytes(base64.b64decode(digest[len("CRC32:"):]), "big")
    for chunk in added:
        value = _crc32(chunk, value)
    return crc32_checksum(value)[1] == other_digest


def parts_of(etag: str) -> int | None:
    """1 for a single-PUT ETag, n for a multipart one, None for an ETag that is no MD5."""
    if _SINGLE.match(etag):
        return 1
    found = _MULTI.match(etag)
    return int(found.group(1)) if found else None


def composite(digests: Sequence[bytes]) -> str:
    """The ETag of an object whose parts have these MD5 digests."""
    return "%s-%d" % (hashlib.md5(b"".join(digests)).hexdigest(), len(digests))


@dataclass(frozen=True)
class PieceDigests:
    """What each aligned piece of one version's bytes hashes to, recorded by a check of the
    whole that passed (:meth:`Verifier.pieces`): a range of that version fetched again is
    fetched in the whole pieces that cover it (:meth:`covering`), and each checked
    (:meth:`matches`). Immutable.

    :param algorithm: each piece's hash (as :data:`_HASHES` names it).
    :param layout: where the pieces begin (a multipart object's parts, or :data:`CRC32_PIECE`).
    :param size: the version's bytes.
    :param digests: piece ``n``'s digest at ``n - 1``.
    """

    algorithm: str
    layout: AnyLayout
    size: int
    digests: tuple[bytes, ...]

    def covering(self, start: int, end: int) -> tuple[int, int]:
        """``[start, end)`` (within the object) widened to the pieces that hold it."""
        first, last = self.layout.number_at(start), self.layout.number_at(max(start, end - 1))
        return self.layout.start(first), min(self.layout.start(last + 1), self.size)

    def matches(self, start: int, blocks: Sequence[bytes | memoryview]) -> bool:
        """Do ``blocks``, the bytes of whole pieces from ``start`` (a piece's start), hash to
        the pieces' digests?"""
        pos, number = start, self.layout.number_at(start)
        if self.layout.start(number) != start:
            raise ValueError("%d is no piece's start" % start)
        end = min(self.layout.start(number + 1), self.size)
        running = _HASHES[self.algorithm]()
        for block in blocks:
            view = memoryview(block)
            while len(view):
                n = min(len(view), end - pos)
                running.update(view[:n])
                view, pos = view[n:], pos + n
                if pos == end:
                    if running.digest() != self.digests[number - 1]:
                        return False
                    number += 1
                    end = min(self.layout.start(number + 1), self.size)
                    running = _HASHES[self.algorithm]()
                if pos >= self.size:
                    return not len(view)
        return pos == self.layout.start(number)  # no piece left part-hashed


class _PartHash:
    """One part's running hash (see :class:`Verifier`); every field GUARDED_BY(lock).

    A whole-object digest (one part) of an object larger than :data:`CRC32_PIECE` also gets a
    CRC32 of each piece of that size (``crcs``: those done, ``crc``: the one under way), as the
    bytes are hashed in order: what :meth:`Verifier.pieces` records (ISA-L's CRC32 costs a
    thirtieth of an MD5)."""

    __slots__ = ("lock", "hash", "pos", "end", "waiting", "done", "crcs", "crc")

    def __init__(
        self, algorithm: str, start: int, end: int, pieces: bool = False, lanes: bool = False
    ) -> None:
        self.lock = threading.Lock()
        self.hash = _LaneMD5() if lanes else _HASHES[algorithm]()
        self.pos = start  # bytes before it are hashed
        self.end = end
        #: start -> views of the bytes there, which came before the ones at ``pos``.
        self.waiting: dict[int, list[memoryview]] = {}
        self.done = False
        self.crcs: list[int] | None = [] if pieces else None
        self.crc = 0

    def update(self, view: memoryview) -> None:
        """Hash ``view``, the bytes at ``pos`` (caller holds ``lock`` and moves ``pos``)."""
        self.hash.update(view)
        if self.crcs is None:
            return
        at = self.pos
        while len(view):
            n = min(len(view), CRC32_PIECE - at % CRC32_PIECE)
            self.crc = _crc32(view[:n], self.crc)
            view, at = view[n:], at + n
            if at % CRC32_PIECE == 0 or at == self.end:
                self.crcs.append(self.crc)
                self.crc = 0


class Verifier:
    """Hashes one version of one object as its bytes arrive, each part in order; compares at the end.

    ::

        >>> v = Verifier('k', 'MD5-of-parts:' + etag, size, part_size=8 << 20)
        >>> v.feed(8 << 20, [b'...'])  # pieces in any order, each fed before a reader gets it
        >>> v.feed(0, [b'...'])
        >>> v.state                    # 'verified' once the last byte is in

    :param expected: what the bytes must hash to, as :func:`plan` reads it.
    :param part_size: the size of every part but the last (multipart objects), or the parts'
        :class:`~s3fs_mount.s3.parts.PartLayout` when they grow as a stream's, or where each
        begins (:class:`~s3fs_mount.s3.parts.PartBounds`) when S3 told them one by one; the
        whole size else.

    Each part of a multipart object is hashed on its own, so the pieces of different parts are
    hashed side by side by the threads that feed them (one hasher thread hashing a 1 GiB object's
    MD5s in order was what a cold read waited for: bench/README.md); within a part the bytes
    are hashed in order, and bytes that came early wait, by reference, for the ones before
    (the thread that feeds the gap hashes them). A whole-object digest is one part.

    The MD5s of a multipart ETag's parts, where ``_md5lanes`` is built, are hashed side by side
    in vector lanes instead (up to 16 parts in one pass, ~3.7x less CPU for 8 than one at a time
    by hashlib: bench/README.md, round 40): a stream's GET threads queue their pieces
    (:meth:`feed_later`) until a vector's worth of parts is queued, and hash them at once;
    the reader of the end hashes what is left (:meth:`settle`) before the verdict. :meth:`feed`
    is both at once.

    Locks: each part's own (:class:`_PartHash`) while its bytes are hashed; ``_lock`` only for
    moments, taken after a part's, never before (so feeders of other parts and :attr:`state`
    never wait behind a hash of megabytes). ``_parts``, ``_digests``, ``_waiting_bytes``,
    ``_state`` and ``got`` are GUARDED_BY(_lock). Side by side, no part's lock is used: a part's
    ``pos`` and ``waiting`` are GUARDED_BY(_lock), and its hash is updated only by the thread
    holding ``_settle_lock`` (taken before ``_lock``, never while holding it).
    """

    def __init__(
        self,
        key: str,
        expected: str,
        size: int,
        part_size: int | AnyLayout,
    ) -> None:
        found = plan(expected)
        if found is None:
            raise ValueError("cannot check a digest %r" % expected)
        self.key, self.expected, self.size = key, expected, size
        self.algorithm, self.parts = found
        #: A whole-object CRC32 is hashed in pieces side by side, as a multipart digest's parts
        #: are, and the pieces' CRC32s combined at the end (one in order waited for each byte).
        self._combine = self.algorithm == "CRC32" and whole(expected) and _crc32_combine is not None
        if self._combine:
            part_size = PartLayout(CRC32_PIECE)
        if isinstance(part_size, int):
            part_size = PartLayout(part_size if part_size > 0 else max(size, 1))
        self.layout: AnyLayout = part_size
        self._count = self.layout.count(size) if size else 0  # parts to hash
        self._lock = threading.Lock()
        self._state = PENDING if size else UNCHECKED
        self._parts: dict[int, _PartHash] = {}  # number -> the part being hashed (till it is done)
        self._digests: dict[int, bytes] = {}  # number -> digest of a part hashed whole
        self._waiting_bytes = 0  # bytes of all parts' early pieces
        self.got = ""  # the digest of the bytes, once MISMATCH
        #: One digest of a large object's whole: a CRC32 of each CRC32_PIECE is hashed beside it
        #: (_PartHash), for :meth:`pieces`; those CRCs once hashed (GUARDED_BY(_lock)).
        self._crc_pieces = self._count == 1 and size > CRC32_PIECE
        self._crcs: list[int] | None = None
        #: The parts' MD5s are hashed side by side in vector lanes (_md5lanes): the bytes fed
        #: wait, queued, to be hashed with other parts' (:meth:`feed_later`, :meth:`settle`).
        #: Then every part's bytes are hashed by the thread holding ``_settle_lock`` (never by
        #: two at once), and ``_parts`` and their ``pos`` and ``waiting`` are GUARDED_BY(_lock).
        self._lanes = _md5lanes is not None and self.algorithm == "MD5-of-parts" and self._count > 1
        self._settle_lock = threading.Lock()
        #: Nobody settles what is queued from now on: each feed hashes it (:meth:`release`).
        self._eager = False  # GUARDED_BY(_lock)

    def feed(self, start: int, blocks: Sequence[bytes]) -> None:
        """Bytes ``start..`` arrived: hash them now (what of them can be). Call it before any
        reader sees them; other threads may feed other pieces meanwhile."""
        if self._lanes:
            self._queue(start, blocks)
            self.settle()
        else:
            self._hash(start, blocks)

    def feed_later(self, start: int, blocks: Sequence[bytes]) -> None:
        """As :meth:`feed`, but the bytes may be left queued (by reference: they must not
        change) to be hashed with other parts' in one pass of the vector lanes: call
        :meth:`settle` before looking at :attr:`state`. A feeder hashes the queue itself once
        :data:`LANE_BATCH` parts have bytes ready (unless another thread is hashing), or when
        the queue holds :data:`MAX_WAITING` bytes (the memory it may keep alive)."""
        if not self._lanes:
            self._hash(start, blocks)
            return
        ready = self._queue(start, blocks)
        with self._lock:
            full, eager = self._waiting_bytes >= MAX_WAITING, self._eager
        full = full or _QUEUED.add(0) >= MAX_QUEUED
        if full or eager:
            self.settle()
        elif ready >= LANE_BATCH:
            self.settle(wait=False)

    def settle(self, wait: bool = True) -> None:
        """Hash every queued byte that follows its part's hashed ones (all parts side by side),
        and what the hashing let follow. ``wait=False``: not if another thread is at it."""
        if not self._lanes or not self._settle_lock.acquire(blocking=wait):
            return
        try:
            while True:
                with self._lock:
                    if self._state != PENDING:
                        return
                    runs = [(n, part, views) for n, part in self._parts.items() if (views := self._run(part))]
                if not runs:
                    break
                _md5_side_by_side([(part.hash, views) for _, part, views in runs])
                log.debug(
                    "%s: %d parts hashed side by side (%d bytes)",
                    self.key, len(runs), sum(len(v) for _, _, views in runs for v in views),
                )
                with self._lock:
                    for number, part, views in runs:
                        part.pos += sum(len(v) for v in views)
                        if part.pos >= part.end:
                            self._parts.pop(number, None)
                            self._digests[number] = part.hash.digest()
                    if self._state == PENDING and len(self._digests) == self._count:
                        self._finish()
            self._count_waiting(0)  # what is left waits for bytes before it, within MAX_WAITING
        finally:
            self._settle_lock.release()

    def release(self) -> None:
        """The stream that fed this check stops feeding it (its reader let go of it): what is
        queued is hashed now, and what is fed later as it comes (no reader will settle it)."""
        if not self._lanes:
            return
        with self._lock:
            self._eager = True
        self.settle()

    def _queue(self, start: int, blocks: Sequence[bytes]) -> int:
        """Queue ``blocks`` (at ``start``) to be hashed; how many parts have bytes ready now."""
        for number, at, views in self._segments(start, blocks):
            length = sum(len(v) for v in views)
            with self._lock:
                if self._state != PENDING or number in self._digests:
                    continue
                part = self._parts.get(number)
                if part is None:
                    part = self._parts[number] = _PartHash(
                        self.algorithm, self.layout.start(number),
                        min(self.layout.start(number + 1), self.size), lanes=True,
                    )
                if at + length <= part.pos or at in part.waiting:
                    continue
                part.waiting[at] = views
                self._waiting_bytes += length
                _QUEUED.add(length)
        with self._lock:
            return sum(1 for part in self._parts.values() if any(s <= part.pos for s in part.waiting))

    def _run(self, part: _PartHash) -> list[memoryview]:
        """Take from ``part``'s queue the views that follow its hashed bytes, in order (caller
        holds ``_lock``); those already behind them are dropped."""
        views: list[memoryview] = []
        at = part.pos
        while True:
            found = None
            for s in list(part.waiting):
                n = sum(len(v) for v in part.waiting[s])
                if s + n <= at:
                    del part.waiting[s]
                    self._waiting_bytes -= n
                    _QUEUED.add(-n)
                elif s <= at and found is None:
                    found = s
            if found is None:
                return views
            later = part.waiting.pop(found)
            n = sum(len(v) for v in later)
            self._waiting_bytes -= n
            _QUEUED.add(-n)
            skip = at - found
            for view in later:
                if skip < len(view):
                    views.append(view[skip:])
                skip = max(0, skip - len(view))
            at = found + n

    def _segments(self, start: int, blocks: Sequence[bytes]) -> list[tuple[int, int, list[memoryview]]]:
        """``blocks`` (at ``start``) cut where parts end: (part number, start, views) each."""
        pos, number, part_end = start, 0, 0
        segments: list[tuple[int, int, list[memoryview]]] = []
        for block in blocks:
            view = memoryview(block)
            while len(view) and pos < self.size:
                if pos >= part_end:
                    number = self.layout.number_at(pos)
                    part_end = min(self.layout.start(number + 1), self.size)
                    segments.append((number, pos, []))
                n = min(len(view), part_end - pos)
                segments[-1][2].append(view[:n])
                view = view[n:]
                pos += n
        return segments

    def _hash(self, start: int, blocks: Sequence[bytes]) -> None:
        """Hash what of ``blocks`` (at ``start``) can be hashed now, part by part; keep the rest."""
        for number, at, views in self._segments(start, blocks):
            self._hash_part(number, at, views)

    def _part(self, number: int) -> _PartHash | None:
        """Part ``number``'s running hash (new if none); None once it is hashed or the check ended."""
        with self._lock:
            if self._state != PENDING or number in self._digests:
                return None
            part = self._parts.get(number)
            if part is None:
                start = self.layout.start(number)
                part = self._parts[number] = _PartHash(
                    self.algorithm, start, min(self.layout.start(number + 1), self.size), self._crc_pieces
                )
            return part

    def _hash_part(self, number: int, start: int, views: list[memoryview]) -> None:
        """Hash ``views`` (bytes ``start..`` of part ``number``), and what waited for them."""
        part = self._part(number)
        if part is None:
            return
        with part.lock:
            if part.done:
                return
            if start > part.pos:
                if start not in part.waiting:
                    length = sum(len(v) for v in views)
                    part.waiting[start] = views
                    self._count_waiting(length)
                return
            self._take(part, start, views)
            while part.pos in part.waiting:
                later = part.waiting.pop(part.pos)
                self._count_waiting(-sum(len(v) for v in later))
                self._take(part, part.pos, later)
            # Early pieces now behind us (overlapping ranges) are of no use.
            for s in [s for s in part.waiting if s < part.pos]:
                self._count_waiting(-sum(len(v) for v in part.waiting.pop(s)))
            if part.pos < part.end:
                return
            part.done = True
            self._count_waiting(-sum(len(v) for vs in part.waiting.values() for v in vs))
            part.waiting.clear()
            digest = part.hash.digest()
        with self._lock:
            self._parts.pop(number, None)
            self._digests[number] = digest
            if part.crcs is not None:
                self._crcs = part.crcs
            if self._state == PENDING and len(self._digests) == self._count:
                self._finish()

    @staticmethod
    def _take(part: _PartHash, start: int, views: list[memoryview]) -> None:
        """Hash what of ``views`` (at ``start`` <= part.pos) is new (caller holds ``part.lock``)."""
        pos = start
        for view in views:
            end = pos + len(view)
            if end > part.pos:
                part.update(view[part.pos - pos :])
                part.pos = end
            pos = end

    def _count_waiting(self, length: int) -> None:
        """Early bytes kept (or let go, negative); past MAX_WAITING in all the check gives up."""
        with self._lock:
            self._waiting_bytes += length
            if self._waiting_bytes > MAX_WAITING and self._state == PENDING:
                self._state = UNCHECKED
                log.debug("read of %s not verified: too many bytes read ahead of a gap", self.key)
            if self._state != PENDING:
                self._drop_parts()  # their early pieces go with them

    def _finish(self) -> None:
        """Every part is hashed: the verdict (caller holds ``_lock``)."""
        digests = [self._digests[n] for n in range(1, self._count + 1)]
        if self._combine:
            ends = [min(self.layout.start(n + 1), self.size) for n in range(self._count + 1)]
            got = crc32_of_parts(
                [(base64.b64encode(d).decode(), ends[n] - ends[n - 1]) for n, d in enumerate(digests, 1)]
            )
        else:
            got = _written(self.algorithm, digests)
        if got == self.expected:
            self._state = VERIFIED
            log.debug("read of %s verified (%s)", self.key, got)
        else:
            self.got = got
            self._state = MISMATCH
            log.error(
                "%s: the bytes S3 sent do not match what it stored: they hash to %s, S3 has %s",
                self.key,
                got,
                self.expected,
            )
        self._drop_parts()

    def __del__(self) -> None:
        if getattr(self, "_lanes", False) and self._waiting_bytes:  # queued behind a gap never fed
            _QUEUED.add(-self._waiting_bytes)

    def _drop_parts(self) -> None:
        """The check ended: its parts, and their queued bytes, go (caller holds ``_lock``)."""
        self._parts.clear()
        if self._lanes and self._waiting_bytes:
            _QUEUED.add(-self._waiting_bytes)
            self._waiting_bytes = 0

    @property
    def state(self) -> str:
        """PENDING (bytes still to come), VERIFIED, MISMATCH, or UNCHECKED (gave up)."""
        with self._lock:
            return self._state

    def pieces(self) -> PieceDigests | None:
        """What each aligned piece of the bytes hashes to, once they are VERIFIED (else None):
        the parts' digests (a whole CRC32's pieces, combined), or for one digest of the whole a
        CRC32 of each :data:`CRC32_PIECE` (the whole itself, up to that size)."""
        with self._lock:
            if self._state != VERIFIED:
                return None
            if self._crcs is not None:
                crcs = tuple(c.to_bytes(4, "big") for c in self._crcs)
                return PieceDigests("CRC32", PartLayout(CRC32_PIECE), self.size, crcs)
            digests = tuple(self._digests[n] for n in range(1, self._count + 1))
        algorithm = "CRC32" if self._combine else self.algorithm
        return PieceDigests(algorithm, self.layout, self.size, digests)
