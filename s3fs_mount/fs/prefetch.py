"""Reading remote bytes into staged files: on demand, and ahead of a sequential reader.

A read first makes sure its bytes are local (:meth:`Prefetcher.ensure`),
fetching what is missing with ranged GETs, conditional on the ETag the item
was opened at (``If-Match``), so a concurrent overwrite gives EIO rather than
a mix of old and new bytes. A reader that goes on where it left off gets a
readahead window that doubles up to ``max_window``, fetched in parallel
chunks in the background; a random reader fetches only what it asks for,
rounded to 4 KiB pages.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from s3fs_mount.fs.staging import StagedFile
from s3fs_mount.s3.names import S3Name
from s3fs_mount.s3.store import RemoteStore

log = logging.getLogger(__name__)

PAGE = 4096
MIN_WINDOW = 4 << 20


@dataclass
class ReadState:
    """Per open handle: where the last read ended, the window, how far ahead is fetched."""

    next_offset: int = 0
    window: int = 0
    ahead_until: int = 0


class Prefetcher:
    """Fetches missing ranges of staged files.

    :param store: where the bytes come from.
    :param bucket: the bucket of every item.
    :param max_window: the largest readahead window (bytes).
    :param chunk: the size of one ranged GET of a readahead.
    :param workers: GETs in flight at once.
    """

    def __init__(
        self,
        store: RemoteStore,
        bucket: str,
        max_window: int = 128 << 20,
        chunk: int = 16 << 20,
        workers: int = 8,
        on_fetched: Callable[[int], None] | None = None,
    ) -> None:
        self.on_fetched = on_fetched  # told how many bytes each fetch added to the cache
        self.store = store
        self.bucket = bucket
        self.max_window = max_window
        self.chunk = chunk
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, "s3-read")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def read(self, item: StagedFile, state: ReadState, offset: int, size: int) -> bytes:
        """Serve a read, fetching what is missing and reading ahead if sequential."""
        end = min(offset + size, item.size)
        if offset >= end:
            return b""
        # Inside the window already fetched counts as sequential too: FUSE threads
        # may deliver the kernel's readahead out of order.
        if offset == state.next_offset or (state.window and state.next_offset <= offset < state.ahead_until):
            state.window = min(max(state.window * 2, MIN_WINDOW), self.max_window)
            grid_end = -(-(offset + state.window) // self.chunk) * self.chunk
            ahead_end = min(grid_end, item.remote_size)
            if ahead_end > state.ahead_until:
                self._schedule(item, max(offset, state.ahead_until), ahead_end)
                state.ahead_until = ahead_end
        else:
            state.window = 0
            state.ahead_until = 0
        self.ensure(item, offset, _round_up(end))
        state.next_offset = max(end, state.next_offset) if state.window else end
        return item.read(offset, end - offset)

    def ensure(self, item: StagedFile, start: int, end: int) -> None:
        """Block until ``[start, end)`` (within the remote part) is local; raise on failure."""
        while True:
            with item.cond:
                gaps = item.missing(start, end)
                if not gaps:
                    return
                mine = [g for g in gaps if not _overlaps(g, item.inflight)]
                if not mine:
                    item.cond.wait()
                    continue
                item.inflight.extend(mine)
            jobs = [(s, min(s + self.chunk, ge)) for gs, ge in mine for s in range(gs, ge, self.chunk)]
            if len(jobs) == 1:
                self._fetch(item, *jobs[0], claimed=mine)
            else:
                futures = [self.pool.submit(self._fetch_piece, item, s, e) for s, e in jobs]
                try:
                    for f in futures:
                        f.result()
                finally:
                    self._unclaim(item, mine)

    def _schedule(self, item: StagedFile, start: int, end: int) -> None:
        """Fetch ``[start, end)`` in the background, in pieces on a ``chunk`` grid."""
        with item.cond:
            pieces = []
            for gs, ge in item.missing(start, end):
                pos = gs
                while pos < ge:
                    piece = (pos, min(ge, (pos // self.chunk + 1) * self.chunk))
                    if not _overlaps(piece, item.inflight):
                        pieces.append(piece)
                    pos = piece[1]
            item.inflight.extend(pieces)
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
            self._unclaim(item, claimed)

    def _fetch_piece(self, item: StagedFile, start: int, end: int) -> None:
        data = self.store.get_range(
            S3Name(item.key, self.bucket), start, end - start, if_match=item.etag or None
        )
        with item.cond:
            fd = item.fd
            data = data[: max(0, min(end, item.remote_size) - start)]
        if fd < 0:
            return
        # Outside the lock: the range is ours (in flight), and readers need the lock meanwhile.
        os.pwrite(fd, data, start)
        with item.cond:
            # A short answer means the object ends here: the rest reads as zeros.
            item.present.add(start, end)
        if self.on_fetched is not None:
            self.on_fetched(len(data))

    @staticmethod
    def _unclaim(item: StagedFile, claimed: list[tuple[int, int]]) -> None:
        with item.cond:
            for piece in claimed:
                if piece in item.inflight:
                    item.inflight.remove(piece)
            item.cond.notify_all()


def _overlaps(r: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(s < r[1] and r[0] < e for s, e in others)


def _round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE
