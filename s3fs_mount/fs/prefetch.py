"""Reading remote bytes: streamed to a sequential reader, or into staged files.

Every GET is ranged and conditional on the ETag the item was opened at
(``If-Match``), so a concurrent overwrite gives EIO rather than a mix of old
and new bytes. A reader that goes on where it left off gets a readahead
window that doubles up to ``max_window``, fetched in parallel GETs:

* while the file is clean and its bytes are not local, in ``piece``-sized GETs whose
  bytes (pieces) are kept in memory for that reader and dropped once it has passed them (streaming:
  writing each byte to the cache file first made a cold read of 1 GiB 2-3x
  slower on ext4 here, bench/README.md). Pieces fetched ahead of their
  readers and not reached yet, all readers together, stay within
  ``max_window`` (the pieces readers are on, or just passed, are not counted:
  they would starve several readers' readahead; bench/README.md), each
  reader's share at most ``max_window`` over the readers streaming (at least
  one piece); the piece a reader needs now is always fetched. While several
  readers stream, each one's new pieces are half a ``piece`` (:meth:`Prefetcher._piece_size`).
  GETs in flight: at most ``workers`` of one reader's, and over all readers as many as
  the window holds shared pieces (16 by default; at most 4 readers' ``workers``), so
  several readers' shares are fetched side by side rather than queued behind one
  another's (:meth:`Prefetcher._hold`; bench/README.md, round 30).
* otherwise (the file is being written, or partly local) the window is
  fetched into the staged file in the background, in ``chunk``-sized GETs on a grid of
  that size (:meth:`Prefetcher.ensure`).

A random reader's miss fetches an aligned block around what it asks for into
the staged file, of a size that follows the reader's locality
(:func:`random_block`): 4 KiB pages while its misses land far from each other,
growing (x4, to :data:`MAX_RANDOM_BLOCK`) while they land near recent ones,
so reads that cluster (a B-tree's pages, a zip's directory, a columnar file's
footer and chunks) are served by a few larger GETs, and reads spread over a
large file cost no more than the page each asks for (bench/README.md: a GET's
latency dominates up to ~256 KiB here, so a larger block pays only if it
serves another read), and never past :data:`RANDOM_BYTES_BOUND` times the
bytes the handle's random reads asked for. An object of up to ``chunk`` bytes that has a digest is
fetched whole instead, in one GET, so it can be checked before any of it is
served.

Checks (see :mod:`s3fs_mount.s3.checksums`): every piece of a stream that
started at byte 0 is fed to that reader's own
:class:`~s3fs_mount.s3.checksums.Verifier` by the GET that fetched it (the MD5s of an
ETag's parts are queued, by reference, and hashed side by side once a vector's worth is
queued: :meth:`~s3fs_mount.s3.checksums.Verifier.feed_later`), all of it hashed before the
read that reaches the end of the object is answered, which raises EIO if the bytes did not match
(each reader's own: a check hashes each byte once, so a shared one passed the
bytes a second stream fetched again unhashed). Once one reader has streamed
the whole object through its own check, and no other handle was open
meanwhile, every page the kernel holds of the file is a checked byte of that
version, and an open may keep them (``keep_cache``,
:meth:`~s3fs_mount.fs.staging.StagedFile.kernel_may_keep`): a re-read is
served by the kernel, until the file changes. That check leaves what each aligned
piece of the version hashes to (:meth:`~s3fs_mount.s3.checksums.Verifier.pieces`,
kept with the item: :meth:`~s3fs_mount.fs.staging.StagedFile.record_pieces`): pages the
kernel drops later are fetched again in the whole pieces that cover them, each checked
before any of it is served (:meth:`Prefetcher._get`; EIO if one differs). Bytes fetched into the
staged file are checked when a fetch makes the whole object local: it is
hashed from the staged file before that fetch's range is marked present, and
the read waiting on it gets :class:`~s3fs_mount.fs.errors.Corrupt` (EIO).
So a small object's random reads are checked before they are served, and a
large one's in any order once they have fetched it all. Either way what was
fetched is forgotten, so a read again fetches again, and the handle that
failed stays failed.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache

from s3fs_mount.fs.errors import Corrupt, FsError, Removed, Replaced
from s3fs_mount.fs.staging import StagedFile
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import MISMATCH, VERIFIED, PieceDigests, Verifier, plan
from s3fs_mount.s3.errors import RemoteStoreError, S3Error
from s3fs_mount.s3.parts import AnyLayout, PartBounds, PartLayout
from s3fs_mount.s3.store import digest_of

log = logging.getLogger(__name__)

PAGE = 4096
MIN_WINDOW = 4 << 20
#: The largest block a random reader's miss fetches; also how near a recent miss counts as near.
MAX_RANDOM_BLOCK = 1 << 20
#: How many of a handle's recent misses its locality is judged on.
RECENT_MISSES = 16
#: A handle's random reads fetch at most this many times the bytes they asked for (issue 5's
#: bound), however near their misses (a larger block is halved until it fits).
RANDOM_BYTES_BOUND = 4
#: A streamed piece is held in blocks of this size: a read of a whole block is that block, uncopied.
BLOCK = 1 << 20
#: The GETs in flight over all readers are at most this many readers' ``workers`` (Prefetcher.budget).
READERS_BUDGET = 4
#: Where a sequential read is served from (Prefetcher._source).
STREAM, LOCAL, STAGED = "stream", "local", "staged"

#: A read's answer as spans of the blocks that hold it, in order: ``data[start:stop]`` of each.
#: The FUSE binding copies each straight into libfuse's buffer (a read that straddles two blocks,
#: as the kernel's readahead sends for a reader of 256 KiB, was joined into new bytes first, then
#: copied again: bench/README.md, round 34); :func:`joined` makes them one ``bytes``.
Span = tuple[bytes, int, int]


def joined(spans: list[Span]) -> bytes:
    """The bytes of ``spans`` as one object (a whole block is itself, uncopied)."""
    if len(spans) == 1 and spans[0][1] == 0 and spans[0][2] == len(spans[0][0]):
        return spans[0][0]
    return b"".join(memoryview(data)[start:stop] for data, start, stop in spans)


@dataclass
class ReadState:
    """Per open handle: where the last read ended, the window, how far ahead is fetched.

    ``pieces``, ``unreached`` and ``etag`` are GUARDED_BY(lock). ``next_offset``, ``window``,
    ``ahead_until``, ``block``, ``misses``, ``asked``, ``fetched``, ``failed`` and ``first`` are unguarded:
    FUSE may run two reads of a handle at once, and a race only misjudges whether the reader is
    sequential, how near its misses are, or its bytes by a read (``failed`` only ever becomes
    True; a deque's append is atomic).
    """

    next_offset: int = 0
    window: int = 0
    ahead_until: int = 0
    #: A streaming reader's pieces in memory: start -> (length, the GET under way or done).
    pieces: dict[int, tuple[int, concurrent.futures.Future[list[bytes]]]] = field(default_factory=dict)
    etag: str = ""  # the version those pieces are of
    #: Starts of pieces fetched ahead that the reader has not reached yet (Prefetcher._ahead).
    unreached: set[int] = field(default_factory=set)
    #: The bytes this handle read failed their check: every later read is EIO (the reader has had
    #: some of them; the kernel must not retry its way to a success).
    failed: bool = False
    #: What a random read's miss fetches now (random_block), and where recent misses were.
    block: int = PAGE
    #: Bytes this handle's random reads asked for, and fetched (Prefetcher._random_range).
    asked: int = 0
    fetched: int = 0
    misses: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_MISSES))
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards pieces, unreached, etag, verifier
    #: The check its stream from byte 0 feeds; None when it has none (a stream from elsewhere, or
    #: let go). GUARDED_BY(lock) for changes; the end check reads it without (one reference: at
    #: worst it finds None, and looks at the version's latest check instead).
    verifier: Verifier | None = None
    #: Where the pieces its stream fetched since byte 0 end (a piece starting before it is
    #: fetched again: its check hashed those bytes once already). GUARDED_BY(lock).
    streamed_until: int = 0
    #: No read through this handle has been answered yet: its first READs, which the kernel sends
    #: together and FUSE threads deliver in any order, begin a stream at byte 0
    #: (:meth:`Prefetcher._sequential`). Unguarded: only ever becomes False.
    first: bool = True
    #: Every reply through this handle came from its stream. GUARDED_BY the item's cond
    #: (:meth:`~s3fs_mount.fs.staging.StagedFile.replied`).
    only_streamed: bool = True


class Prefetcher:
    """Serves reads of remote bytes: streamed from memory, or fetched into staged files.

    :param store: the bucket the bytes come from.
    :param max_window: the largest readahead window (bytes).
    :param chunk: the size of one ranged GET of a readahead into the staged file, and of the
        largest object a random read fetches whole to check it.
    :param piece: the size of one ranged GET of a streamed read (at most ``chunk``, which
        should be a multiple of it): 8 MiB, as boto3's downloads, so that a window is fetched
        in twice as many GETs side by side as in 16 MiB ones, and a reader holds half the
        bytes where it is (bench/README.md).
    :param workers: GETs in flight at once for one reader (``-o parallel``); all readers
        together have up to as many as the window holds shared pieces (at least ``workers``).
    :param part_layout_of: finds where a multipart object's parts begin and end (HEADs), to
        check it: ``(key, etag, size, parts, every)`` -> :data:`~s3fs_mount.s3.parts.AnyLayout`
        (``every``: each part asked for, not found from the first and the last).
    :param verify: check whole-object reads against the object's checksum, or its ETag.
    :param checksum_of: the digest (``CRC32:...``) S3 told for a version, if it told one.
    :param readahead: the kernel's readahead per file: its READs come up to two of these ahead
        of the reader, delivered out of order by FUSE's threads.

    Locks: ``_verify_lock`` guards ``_verifiers`` and ``_expectations``; ``_held_lock`` guards
    ``_held``; neither is held during a request, nor while taking the other (a ReadState's
    ``lock`` may be held while taking either). Every other
    field is immutable after __init__. A staged item is filled only through its methods
    (:meth:`~s3fs_mount.fs.staging.StagedFile.claim_missing`, ``fill``, ``unclaim``).
    """

    def __init__(
        self,
        store: Bucket,
        max_window: int = 64 << 20,
        chunk: int = 16 << 20,
        piece: int = 8 << 20,
        workers: int = 8,
        on_fetched: Callable[[int], None] | None = None,
        part_layout_of: Callable[[str, str, int, int, bool], AnyLayout | None] | None = None,
        verify: bool = True,
        checksum_of: Callable[[str, str], str] | None = None,
        readahead: int = 1 << 20,
    ) -> None:
        #: The kernel's readahead (``-o kernel_readahead``): how far ahead of a sequential reader
        #: its READs may come, out of order (:meth:`_sequential`).
        self.readahead = readahead
        #: What version (key, etag) hashes to, if known without a request (its x-amz-checksum-*).
        self.checksum_of = checksum_of
        #: The part size of a multipart object (key, etag), for its check; None: unknown.
        self.part_layout_of = part_layout_of
        self.verify = verify
        #: (key, etag) -> the check of that version's bytes. GUARDED_BY(_verify_lock).
        self._verifiers: LRUCache[tuple[str, str], Verifier] = LRUCache(256)
        #: (key, etag) -> what _expected found (a version's digest never changes). GUARDED_BY(_verify_lock).
        self._expectations: LRUCache[tuple[str, str], tuple[str, int | AnyLayout] | None] = LRUCache(
            4096, getsizeof=_weight
        )
        self._verify_lock = threading.Lock()
        self.on_fetched = on_fetched  # told how many bytes each fetch added to the cache
        self.store = store
        self.max_window = max_window
        self.chunk = chunk
        self.piece = min(piece, chunk)
        #: The piece of a reader while others stream too (_piece_size): half, whole 1 MiB blocks.
        self.shared_piece = max(BLOCK, self.piece // 2 // BLOCK * BLOCK)
        self.workers = workers
        #: GETs in flight over all readers: the window in shared pieces, so that several readers'
        #: shares are fetched at once, but at most ``READERS_BUDGET`` readers' ``workers`` (a larger
        #: window is fetched in larger shares, not in more threads and connections).
        self.budget = max(workers, min(max_window // self.shared_piece, READERS_BUDGET * workers))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.budget, "s3-read")  # threads start as needed
        self._held = 0  # GUARDED_BY(_held_lock): bytes of all readers' pieces in memory or on their way
        self._ahead = 0  # GUARDED_BY(_held_lock): of those, bytes of pieces no reader has reached yet
        self._readers = 0  # GUARDED_BY(_held_lock): readers holding pieces (they share the window)
        self._held_lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def held(self) -> int:
        """Bytes of streamed pieces in memory or under way, over all readers."""
        with self._held_lock:
            return self._held

    def read(self, item: StagedFile, state: ReadState, offset: int, size: int) -> bytes:
        """Serve a read: streamed if sequential over remote bytes, else from the staged file.

        :raises Replaced: S3 holds another client's version now, not the one the item is of.
        """
        return joined(self.read_spans(item, state, offset, size))

    def read_spans(self, item: StagedFile, state: ReadState, offset: int, size: int) -> list[Span]:
        """:meth:`read`'s bytes as the spans of the blocks that hold them (no join).

        :raises Removed: S3 holds no object at the item's key now (another client removed it).
        """
        try:
            return self._read(item, state, offset, size)
        except S3Error as exc:
            if exc.precondition_failed:
                raise Replaced(item.key, item.view().etag) from exc
            if exc.not_found and exc.code != "NoSuchBucket":
                raise Removed(item.key) from exc
            raise
        finally:
            state.first = False  # answered: the reads after it go by where it ended

    def _read(self, item: StagedFile, state: ReadState, offset: int, size: int) -> list[Span]:
        """read's work."""
        if state.failed:
            raise FsError(errno.EIO, "%s: an earlier read through this handle failed its check" % item.key)
        end = min(offset + size, item.size)
        if offset >= end:
            return []
        # A small object's random read is fetched whole and checked before it is served anyway.
        first = state.first and item.remote_size > self.chunk
        if self._sequential(state, offset, first):
            state.window = min(max(state.window * 2, MIN_WINDOW), self.max_window)
            grid_end = -(-(offset + state.window) // self.chunk) * self.chunk
            ahead_end = min(grid_end, item.remote_size)
            source = self._source(item, offset, end)
            if source == STREAM:
                try:
                    data = self._stream(item, state, offset, end, ahead_end, from_0=first)
                except Corrupt:
                    self.drop(state)
                    state.failed = True
                    raise
                except S3Error as exc:
                    if not (exc.precondition_failed and _moved_on(item, state.etag)):
                        raise
                    # This mount uploaded a new version meanwhile: its bytes are local.
                    self.drop(state)
                    return self._read(item, state, offset, size)
                state.ahead_until = max(state.ahead_until, ahead_end)
                state.next_offset = max(end, state.next_offset)
                item.replied(state, streamed=True)
                return data
            if source == STAGED:
                if state.pieces:  # streaming ended (the file is being written)
                    self.drop(state)
                    state.ahead_until = offset
                if ahead_end > state.ahead_until:
                    self._schedule(item, max(offset, state.ahead_until), ahead_end)
                    state.ahead_until = ahead_end
        else:
            state.window = 0
            state.ahead_until = 0
            self.drop(state)
        start, stop = offset, _round_up(end)
        if not state.window:
            start, stop = self._random_range(item, state, offset, end)
        try:
            self.ensure(item, start, stop)
        except Corrupt:
            state.failed = True  # the kernel's readahead may eat this EIO: the next read gets it
            raise
        state.next_offset = max(end, state.next_offset) if state.window else end
        if end >= item.remote_size:
            view = item.view()
            if view.etag and not (view.dirty or view.uploading):
                self._check(item, view.etag, state)
        item.replied(state, streamed=False)
        data = item.read(offset, end - offset)
        return [(data, 0, len(data))]

    def _sequential(self, state: ReadState, offset: int, first: bool) -> bool:
        """Does a read at ``offset`` go on the handle's sequential stream? At the offset where
        the last one ended; and, as FUSE threads deliver the kernel's readahead out of order:

        * while a window is open, anywhere from a ``chunk`` behind that to the end of the window,
          or, while it streams, to two of the kernel's readaheads past it (its READs ahead of
          the reader: the window it reads in and the next; the window is known only once a
          read's stream answered; a random reader that met its next offset on local bytes has
          no stream, and stays random);
        * at the handle's ``first`` read (of an object larger than a ``chunk``), anywhere within
          two readaheads of byte 0: the kernel's first READs are sent together and any may come
          first; :meth:`_stream` begins at byte 0, for its check.

        A read taken as random drops the stream, and its check: the stream begun again past
        byte 0 is checked by nothing (bench/README.md, round 39)."""
        if offset == state.next_offset:
            return True
        if first:
            return offset < 2 * self.readahead
        if not state.window or offset < state.next_offset - self.chunk:
            return False
        reach = state.next_offset + 2 * self.readahead
        return offset < (max(state.ahead_until, reach) if state.pieces else state.ahead_until)

    @staticmethod
    def _random_range(item: StagedFile, state: ReadState, offset: int, end: int) -> tuple[int, int]:
        """What a random read of ``[offset, end)`` makes local: on a miss, the aligned block
        :func:`random_block` says, halved while it would take the handle's random reads past
        :data:`RANDOM_BYTES_BOUND` times the bytes they asked for."""
        state.asked += end - offset
        start, stop = offset, _round_up(end)
        if not item.remote_gaps(offset, end):
            return start, stop  # local, or bytes written here
        state.block = random_block(state.block, state.misses, offset)
        state.misses.append(offset)
        block = state.block
        while True:
            lo, hi = offset // block * block, max(stop, -(-end // block) * block)
            fetch = sum(e - s for s, e in item.remote_gaps(lo, min(hi, item.remote_size)) or [])
            if block <= PAGE or state.fetched + fetch <= RANDOM_BYTES_BOUND * state.asked:
                state.fetched += fetch
                return lo, hi
            block //= 2

    def follow(self, state: ReadState, etag: str) -> None:
        """A reader's version is now ``etag``, the same bytes under a new ETag (a metadata copy:
        :meth:`~s3fs_mount.fs.mutations.Mutations.follow_same_bytes`): its pieces of the old one
        go (their GETs are refused), but not its stream's check, which the new version's bytes
        go on feeding (they hash to the same whole-object digest, or the read fails its check)."""
        with state.lock:
            verifier, streamed = state.verifier, state.streamed_until
            self._let_go_all(state)
            state.etag = etag
            state.verifier, state.streamed_until = verifier, streamed

    def drop(self, state: ReadState) -> None:
        """Let go of a reader's streamed pieces (at close, or when it stops streaming)."""
        with state.lock:
            self._let_go_all(state)

    # -- streaming ---------------------------------------------------------------------

    @staticmethod
    def _source(item: StagedFile, offset: int, end: int) -> str:
        """Where a sequential read's bytes come from: the staged file, or S3 by streaming."""
        gaps = item.remote_gaps(offset, end)
        if gaps is None:
            return STAGED  # being written, or never was remote: the staged file has it all
        return STREAM if gaps else LOCAL

    def _stream(
        self, item: StagedFile, state: ReadState, offset: int, end: int, ahead_end: int, from_0: bool = False
    ) -> list[Span]:
        """``[offset, end)`` from the reader's pieces in memory; fetches them, and on to ``ahead_end``.
        ``from_0``: the handle's first read, which begins the stream at byte 0 wherever it is
        (the kernel's READs ahead of the reader may come before the one at byte 0), so that the
        stream has its check."""
        with state.lock:
            if state.etag != item.etag:
                self._let_go_all(state)
                state.etag = item.etag
            pieces = item.pieces_of(state.etag) if self.verify else None
            size = self._piece_size(state)
            needed: list[tuple[int, int, concurrent.futures.Future[list[bytes]]]] = []
            again = False
            start = 0 if from_0 and not state.pieces else self._covering(state, offset, size)
            if state.pieces and state.streamed_until < start <= state.streamed_until + 2 * self.readahead:
                # A READ delivered before the ones behind it, past what the stream has fetched: the
                # stream goes on from there, so the late READs find their bytes fetched by it (else
                # a hole their piece is fetched into later, as if fetched again: pages not kept).
                start = state.streamed_until
            if pieces is not None and start not in state.pieces:
                start = self._on_pieces(state, pieces, start)
            while start < min(max(end, ahead_end), item.remote_size):
                if start in state.pieces:
                    length, future = state.pieces[start]
                else:
                    # Up to the next piece held, if one is nearer than a piece's size.
                    later = [s for s in state.pieces if s > start]
                    length = min(size, item.remote_size - start, min(later, default=start + size) - start)
                    if pieces is not None:  # to the end of a checked piece: fetched once, whole
                        stop = pieces.covering(start, start + length)[1]
                        length = min(stop, min(later, default=item.remote_size)) - start
                    if not self._hold(state, start, length, needed=start < end):
                        break  # ahead of the reader, and the budget (or its share) is spent
                    if start == 0 and state.verifier is None:  # a stream from byte 0: a check of its own
                        state.verifier = self._new_verifier(item.key, state.etag, item.remote_size)
                    elif start < state.streamed_until:
                        again = True  # let go, and asked for again (reads delivered late): its check
                        # hashed the first copy, this one is unchecked: the kernel's pages are not kept
                    state.streamed_until = max(state.streamed_until, start + length)
                    verifier = state.verifier
                    future = self.pool.submit(
                        self._get, item.key, state.etag, start, length, verifier, pieces
                    )
                    state.pieces[start] = (length, future)
                if start < end:
                    needed.append((start, length, future))
                    # On it now: no longer ahead, before the pieces after it are counted against
                    # its share (else a reader entering a piece was a piece short of its share).
                    self._reached(state, [(start, length)])
                start += length
            etag, verifier = state.etag, state.verifier
        if again:
            item.replied(state, streamed=False)
        parts: list[Span] = []
        for start, length, future in needed:
            try:
                blocks = future.result()
            except concurrent.futures.CancelledError:  # dropped by another read meanwhile
                blocks = self._get(item.key, etag, start, length, verifier, pieces)
            except BaseException:
                with state.lock:  # a later read asks again
                    if start in state.pieces and state.pieces[start][1] is future:
                        self._let_go(state, start)
                raise
            lo = max(offset, start)
            for i in range((lo - start) // BLOCK, min(len(blocks), -(-(end - start) // BLOCK))):
                at = start + i * BLOCK
                # Spans, not slices: a slice of bytes is a copy of its own (the kernel's readahead
                # sends reads that straddle blocks: 1 MiB at 512 KiB offsets).
                parts.append((blocks[i], max(lo, at) - at, min(end - at, len(blocks[i]))))
        with state.lock:
            behind = self._kept_behind(size)
            for start in [s for s, (n, _) in state.pieces.items() if s + n + behind <= offset]:
                self._let_go(state, start)
        if end >= item.remote_size:
            self._check(item, etag, state)
        return parts

    def _kept_behind(self, size: int) -> int:
        """How far behind a read a reader's pieces are kept, its pieces being ``size``: FUSE threads
        deliver the kernel's READs out of order, a READ up to two of its readaheads after those
        past it (:meth:`_sequential` takes it as the stream's). A piece let go nearer is fetched
        again for it, unchecked, and the kernel may not keep the file's pages: with four readers'
        half pieces (4 MiB) at ``kernel_readahead=4M``, 15-23 GETs of 4 MiB more a GiB
        (bench/README.md, round 40 h5)."""
        return max(size, 2 * self.readahead)

    def _piece_size(self, state: ReadState) -> int:
        """The size of a reader's next pieces: ``piece`` while it streams alone, half that while
        other readers stream too (caller holds ``state.lock``). Their share of the window is then
        a fraction of it, and in halves it is fetched in twice as many GETs side by side, the
        first bytes of each arrive sooner, and the pieces each reader holds where it is are
        half the bytes (bench/README.md, round 29)."""
        with self._held_lock:
            others = self._readers - (1 if state.pieces else 0)
        return self.piece if others <= 0 else self.shared_piece

    @staticmethod
    def _covering(state: ReadState, offset: int, size: int) -> int:
        """Where the piece holding ``offset`` starts: a piece of the reader's, else ``offset``
        rounded down to ``size`` (but not into a piece that ends at or before ``offset``)
        (caller holds ``state.lock``)."""
        start = offset // size * size
        for at, (length, _) in state.pieces.items():
            if at <= offset < at + length:
                return at
            if start < at + length <= offset:
                start = at + length
        return start

    @staticmethod
    def _on_pieces(state: ReadState, pieces: PieceDigests, start: int) -> int:
        """Where a stream's new piece at ``start`` begins when the version's checked pieces are
        known: at the start of the one holding it, but not into a piece held (caller holds
        ``state.lock``), so that each is fetched whole once, not once for each stream piece on it."""
        held = max((at + n for at, (n, _) in state.pieces.items() if at + n <= start), default=0)
        return max(pieces.covering(start, start + 1)[0], held)

    def _get(
        self,
        key: str,
        etag: str,
        start: int,
        length: int,
        verifier: Verifier | None,
        pieces: PieceDigests | None = None,
    ) -> list[bytes]:
        """Bytes ``start..start+length`` of version ``etag``, in :data:`BLOCK` blocks, fed to
        ``verifier``; with ``pieces`` (the version was checked whole) fetched in the whole pieces
        that cover them, each checked (:class:`Corrupt` if one differs)."""
        if pieces is None:
            blocks = self.store.get_range_blocks(key, start, length, BLOCK, if_match=etag or None)
        else:
            blocks = self._get_checked(key, etag, start, length, pieces)
        if verifier is not None:
            # Hashed here, or queued (by reference) to be hashed with other pieces, their parts
            # side by side, once enough are queued; all of them before the verdict (_check).
            verifier.feed_later(start, blocks)
        return blocks

    def _get_checked(self, key: str, etag: str, start: int, length: int, pieces: PieceDigests) -> list[bytes]:
        """:meth:`_get`'s bytes when ``pieces`` say what each aligned piece hashes to."""
        lo, hi = pieces.covering(start, start + length)
        blocks = self.store.get_range_blocks(key, lo, hi - lo, BLOCK, if_match=etag or None)
        if not pieces.matches(lo, blocks):
            log.error(
                "%s: the bytes S3 sent (%d..%d, of a version checked whole) do not match what it stored",
                key, lo, hi,
            )
            raise Corrupt("%s: bytes fetched again do not match the object's checked pieces" % key)
        skip, length = start - lo, min(length, hi - start)
        if skip % BLOCK:  # not on a block of the fetch: blocks of its own (a copy; rare)
            whole = b"".join(blocks)[skip : skip + length]
            return [whole[at : at + BLOCK] for at in range(0, length, BLOCK)]
        blocks = blocks[skip // BLOCK : -(-(skip + length) // BLOCK)]
        tail = (skip + length) % BLOCK
        if tail and blocks:
            blocks[-1] = blocks[-1][:tail]
        return blocks

    # -- checks ------------------------------------------------------------------------

    def _known_verifier(self, key: str, etag: str) -> Verifier | None:
        with self._verify_lock:
            return self._verifiers.get((key, etag))

    def _new_verifier(self, key: str, etag: str, size: int) -> Verifier | None:
        """A check of version ``etag`` for one reader's stream from byte 0 (None: nothing to check
        it against). Its own, never shared: a check hashes each byte once, so bytes fetched again
        by another stream (or by a reader that went back) fed to a check that had hashed them
        would pass unhashed. It is also the version's latest check, which a reader of the end
        without a stream of its own looks at (:meth:`_check`)."""
        expected = self._expected(key, etag, size)
        if expected is None:
            return None
        # Hashed by the GET threads that feed it, a part on each at once (Verifier).
        verifier = Verifier(key, expected[0], size, expected[1])
        with self._verify_lock:
            self._verifiers[(key, etag)] = verifier
        return verifier

    def _expected(self, key: str, etag: str, size: int, told: str = "") -> tuple[str, int | AnyLayout] | None:
        """What version ``etag`` (``size`` bytes) must hash to, and its part size; None: unchecked.
        ``told``: the digest a HEAD of that version told, where the caller has one."""
        if not self.verify or size <= 0:
            return None
        with self._verify_lock:
            known = self._expectations.get((key, etag), False)
        if known is not False and (known is not None or not told):
            return known
        found = self._find_expected(key, etag, size, told)
        with self._verify_lock:
            self._expectations[(key, etag)] = found
        return found

    def _find_expected(
        self, key: str, etag: str, size: int, told: str = ""
    ) -> tuple[str, int | AnyLayout] | None:
        known = self.checksum_of(key, etag) if self.checksum_of is not None and not told else ""
        digest = told or known or digest_of(etag)
        found = plan(digest)
        if found is None:
            return None  # no checksum, and an ETag that is no MD5 (SSE-KMS, SSE-C): nothing to check
        if found[1] == 1:
            return digest, size
        if self.part_layout_of is None:
            return None
        known = self.part_layout_of(key, etag, size, found[1], False)
        if known is None:
            log.debug("%s: part size unknown, not checked", key)
            return None
        return digest, known

    def _check_fetched(self, item: StagedFile, etag: str, generation: int, size: int) -> None:
        """Hash the ``size`` bytes of version ``etag`` from the staged file: :class:`Corrupt`, and
        the fetched bytes forgotten, if they do not match what S3 stored."""
        expected = self._expected(item.key, etag, size)
        if expected is None:
            return

        def feed(verifier: Verifier) -> None:
            for at in range(0, size, BLOCK):
                verifier.feed(at, [os.pread(item.fd, min(BLOCK, size - at), at)])

        if self._hash_right(item.key, etag, size, expected, feed):
            return
        if not item.drop_fetched(etag, generation):
            return  # written meanwhile: those are not the bytes that were fetched
        raise Corrupt("%s: the %d bytes fetched do not match what S3 stored" % (item.key, size))

    def _hash_right(
        self,
        key: str,
        etag: str,
        size: int,
        expected: tuple[str, int | AnyLayout],
        feed: Callable[[Verifier], None],
    ) -> bool:
        """Do the ``size`` bytes of version ``etag`` that ``feed`` gives a check (all of them, in
        this thread) hash to what S3 stored (``expected``: :meth:`_expected`'s)? Hashed again
        where S3 says each part is, when the parts' places were guessed wrong
        (:meth:`_parts_told_anew`): the bytes are at hand."""
        verifier = Verifier(key, expected[0], size, expected[1])  # hashes in this thread, as fed
        feed(verifier)
        if verifier.state == MISMATCH:
            told = self._parts_told_anew(key, etag, verifier)
            if told is not None:
                verifier = Verifier(key, expected[0], size, told)
                feed(verifier)
        return verifier.state != MISMATCH

    def fetch_version(self, key: str, etag: str, size: int, digest: str = "") -> bytes:
        """All ``size`` bytes of version ``etag`` of ``key``, in memory (one GET, ``If-Match``),
        checked as a reader's bytes are before any of them is handed on: against ``digest``
        (what a HEAD of the version told; else what :attr:`checksum_of` knows, or its ETag), a
        multipart one's part by part where its parts are (:attr:`part_layout_of`). Unchecked
        only where a reader's would be: nothing to check with (an ETag that is no MD5 and no
        checksum), parts S3 does not place, or ``verify`` off. For the uploader: another
        client's version that our appends go after (:meth:`Uploader._append_onto_theirs
        <s3fs_mount.fs.upload.Uploader._append_onto_theirs>`).

        :raises Corrupt: the bytes (or their count) are not what S3 stored.
        :raises S3Error: the GET's (412: the key holds another version now).
        """
        blocks = self.store.get_range_blocks(key, 0, size, BLOCK, if_match=etag or None) if size else []
        got = sum(len(b) for b in blocks)
        expected = self._expected(key, etag, size, digest)
        if got != size:
            raise Corrupt("%s: %d bytes of version %s came, of %d" % (key, got, etag, size))
        if expected is None or self._hash_right(key, etag, size, expected, lambda v: v.feed(0, blocks)):
            return b"".join(blocks)
        raise Corrupt("%s: version %s does not match what S3 stored (%s)" % (key, etag, expected[0]))

    def _check(self, item: StagedFile, etag: str, state: ReadState | None = None) -> None:
        """A read reached the end of version ``etag``: EIO if its bytes failed their check."""
        own = state.verifier if state is not None else None
        verifier = own if own is not None else self._known_verifier(item.key, etag)
        if verifier is None:
            return
        verifier.settle()  # what its GETs queued (Verifier.feed_later) is hashed first
        verdict = verifier.state
        if verdict == VERIFIED and state is not None and own is verifier:
            # Read whole from its own stream, checked: the kernel may keep the pages, if they
            # all came through this reader (StagedFile.checked); what it dropped of them is
            # checked piece by piece when fetched again (StagedFile.record_pieces).
            item.record_pieces(etag, verifier.pieces())
            item.checked(etag, state)
        if verdict != MISMATCH:
            return
        with self._verify_lock:
            if self._verifiers.get((item.key, etag)) is verifier:
                self._verifiers.pop((item.key, etag), None)  # a read again is checked again
        if state is not None:
            self.drop(state)
            state.failed = True
        item.drop_fetched(etag)
        if self._parts_told_anew(item.key, etag, verifier) is not None:
            # The bytes this reader had were hashed on parts where they are not: unchecked, so
            # still EIO; a read again is checked where S3 says each part is.
            raise FsError(errno.EIO, "%s: bytes read could not be checked; read it again" % item.key)
        raise FsError(errno.EIO, "%s: bytes read do not match the object's ETag" % item.key)

    def _parts_told_anew(self, key: str, etag: str, verifier: Verifier) -> AnyLayout | None:
        """A check of version ``etag`` of a multipart object failed, its parts taken where its first
        and last part put them (one size, or a stream's doubling sizes): where S3 says each part
        is (a HEAD each), when that differs, kept for the version's checks from now on (those
        between may differ and still add up: the mismatch was the guess's, not the bytes'); else
        None (the bytes did not match)."""
        guessed, count = verifier.layout, verifier.parts
        if not isinstance(guessed, PartLayout) or count < 3 or self.part_layout_of is None:
            return None
        try:
            told = self.part_layout_of(key, etag, verifier.size, count, True)
        except RemoteStoreError as exc:  # the read's answer stays EIO; a read again asks again
            log.warning("%s: where its parts are is unknown: %s", key, exc)
            return None
        if told is None:
            return None
        with self._verify_lock:  # asked once a version: checked where S3 says from now on
            self._expectations[(key, etag)] = (verifier.expected, told)
        if all(told.start(n) == guessed.start(n) for n in range(2, count + 1)):
            return None
        log.warning(
            "%s: its parts are not where its first and last part put them (sizes of their own): "
            "checked where S3 says each one is from now on",
            key,
        )
        return told

    def _hold(self, state: ReadState, start: int, length: int, needed: bool) -> bool:
        """Count a piece about to be fetched for ``state`` (caller holds ``state.lock``); False:
        a piece ahead that the window, or this reader's share of it, has no room for, or while
        ``workers`` of this reader's GETs are under way (the pool is shared by all readers)."""
        mine = sum(state.pieces[start][0] for start in state.unreached)
        if not needed and sum(not f.done() for _, f in state.pieces.values()) >= self.workers:
            return False
        with self._held_lock:
            readers = self._readers + (0 if state.pieces else 1)
            share = max(length, self.max_window // readers)
            if not needed and (self._ahead + length > self.max_window or mine + length > share):
                return False
            self._readers = readers
            self._held += length
            if not needed:
                self._ahead += length
        if not needed:
            state.unreached.add(start)
        return True

    def _reached(self, state: ReadState, pieces: list[tuple[int, int]]) -> None:
        """A reader is on these (start, length) pieces: no longer ahead (caller holds ``state.lock``)."""
        for start, length in pieces:
            if start in state.unreached:
                state.unreached.discard(start)
                with self._held_lock:
                    self._ahead -= length

    def _let_go_all(self, state: ReadState) -> None:
        """Forget every piece of a reader, and its stream's check (caller holds ``state.lock``): a
        stream again from byte 0 is checked anew; one from elsewhere is not (:meth:`_new_verifier`)."""
        for start in list(state.pieces):
            self._let_go(state, start)
        if state.verifier is not None:
            state.verifier.release()  # what its GETs queued is hashed now, or as it comes
        state.verifier = None
        state.streamed_until = 0

    def _let_go(self, state: ReadState, start: int) -> None:
        """Forget one piece (caller holds ``state.lock``); a GET not started yet is cancelled."""
        length, future = state.pieces.pop(start)
        future.cancel()
        self._reached(state, [(start, length)])
        with self._held_lock:
            self._held -= length
            if not state.pieces:
                self._readers -= 1

    def ensure(self, item: StagedFile, start: int, end: int) -> None:
        """Block until ``[start, end)`` (within the remote part) is local; raise on failure.

        An object of up to ``chunk`` bytes that has a digest is fetched whole, in one GET,
        and checked before a byte of it is served (:class:`Corrupt` if it fails).

        :raises Replaced: S3 holds another client's version now, not the one the item is of.
        """
        try:
            self._ensure(item, start, end)
        except S3Error as exc:
            if exc.precondition_failed:
                raise Replaced(item.key, item.view().etag) from exc
            raise

    def _ensure(self, item: StagedFile, start: int, end: int) -> None:
        """ensure's work."""
        view = item.view()
        etag, size = view.etag, view.remote_size
        small = 0 < size <= self.chunk and not (view.dirty or view.uploading)
        if small and etag and self._expected(item.key, etag, size) is not None:
            start, end = 0, size  # one GET, checked before any of it is served
        while True:
            mine = item.claim_missing(start, end)
            if not mine:
                return
            jobs = [(s, min(s + self.chunk, ge)) for gs, ge in mine for s in range(gs, ge, self.chunk)]
            if len(jobs) == 1:
                self._fetch(item, *jobs[0], claimed=mine)
            else:
                futures = [self.pool.submit(self._fetch_piece, item, s, e) for s, e in jobs]
                try:
                    for f in futures:
                        f.result()
                finally:
                    item.unclaim(mine)

    def _schedule(self, item: StagedFile, start: int, end: int) -> None:
        """Fetch ``[start, end)`` in the background, in pieces on a ``chunk`` grid."""
        pieces = item.claim_missing(start, end, grid=self.chunk, wait=False)
        for piece in pieces:
            self.pool.submit(self._background, item, piece)

    def _background(self, item: StagedFile, piece: tuple[int, int]) -> None:
        try:
            self._fetch(item, *piece, claimed=[piece])
        except Exception as exc:  # the reader will fetch again and see the error
            log.debug("readahead of %s %s failed: %s", item.key, piece, exc)

    def _fetch(self, item: StagedFile, start: int, end: int, claimed: list[tuple[int, int]]) -> None:
        try:
            self._fetch_piece(item, start, end)
        finally:
            item.unclaim(claimed)

    def _fetch_piece(self, item: StagedFile, start: int, end: int) -> None:
        """Fetch ``[start, end)`` (claimed by the caller) into the staged file."""
        etag = item.etag
        pieces = item.pieces_of(etag) if self.verify else None
        try:
            if pieces is None:
                data = self.store.get_range(item.key, start, end - start, if_match=etag or None)
            else:  # checked whole before: fetched in whole pieces, each checked
                data = b"".join(self._get_checked(item.key, etag, start, end - start, pieces))
        except S3Error as exc:
            if exc.precondition_failed and _moved_on(item, etag):
                return  # our own upload (or a newer open) moved the item on: the caller looks again
            raise
        filled = item.fill(start, end, data, etag, hold_whole=self.verify)
        if filled is None:
            return  # the old version's bytes, or the item is closed
        if self.on_fetched is not None:
            self.on_fetched(filled.written)
        if not filled.held:
            return
        # The range is still claimed: no reader sees its bytes before they are checked.
        self._check_fetched(item, etag, filled.generation, filled.size)
        item.fill_checked(start, end, etag)


def random_block(block: int, misses: deque[int], offset: int) -> int:
    """The block a random miss at ``offset`` fetches, after ``block`` for the misses before.

    Near one of the recent ``misses`` (within :data:`MAX_RANDOM_BLOCK`): the reader has
    locality, and the block grows x4 (up to that); far from all of them it halves (down to
    a page): a larger block would only have fetched bytes no read asked for.

    >>> random_block(PAGE, deque([10 << 20]), (10 << 20) + 8192)
    16384
    """
    if any(abs(offset - m) < MAX_RANDOM_BLOCK for m in misses):
        return min(block * 4, MAX_RANDOM_BLOCK)
    return max(block // 2, PAGE)


def _weight(found: tuple[str, int | AnyLayout] | None) -> int:
    """What a version's expectation counts for in ``Prefetcher._expectations``: one, and one
    more for each 64 parts whose starts it keeps (parts S3 told one by one: up to 10,000)."""
    if found is not None and isinstance(found[1], PartBounds):
        return 1 + len(found[1].starts) // 64
    return 1


def _moved_on(item: StagedFile, etag: str) -> bool:
    """Is the item no longer at version ``etag``? Then a 412 for it is no news of another client."""
    return item.etag != etag


def _round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE
