"""List-ahead: a directory's next listing page is fetched while its reader takes the current one.

A readdir of a large directory hands the kernel one ListObjectsV2 page (1,000
entries) after another. Fetched only when the reader reaches its end, each page
cost a round trip and the server's work during which nothing was handed out:
the walk took the listing's time plus the time to hand every entry out.
:class:`ListAhead` asks for page ``k+1`` on a thread of its own as soon as page
``k`` is handed out, so the two overlap.

Bounds:

* One page ahead per directory being read, no more: memory is one parsed page
  (~1,000 entries) per open listing.
* A listing whose page says it is the last (not truncated) asks for nothing
  more: a small directory costs what it did (one LIST, no thread).
* At most ``workers`` pages are fetched ahead at once over all directories; a
  reader that finds none free fetches its next page itself, as before.
* A reader that stops early (``ls | head``, a rewind) leaves at most the one page
  in flight: it is dropped when it comes, and the listing's generator closed.

An error fetching a page ahead is raised to the reader where it reaches that
page, after the entries before it, as when it fetched the page itself.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

from s3fs_mount.s3.xmlparse import ListPage

#: Listing pages fetched ahead at once (over all directories being read).
WORKERS = 4


class ListAhead:
    """Fetches listing pages one ahead of their readers on up to ``workers`` threads (0: none).

    Locks: ``_free`` (a semaphore) counts the threads free; the executor is thread-safe.
    Immutable after __init__: ``workers``.
    """

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._free = threading.BoundedSemaphore(max(workers, 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "list-ahead") if workers > 0 else None

    def pages(self, pages: Iterator[ListPage]) -> Iterator[ListPage]:
        """``pages`` (a listing, page by page), each next one asked for while the last is handed out."""
        pending: concurrent.futures.Future[ListPage | None] | None = None
        try:
            page: ListPage | None = next(pages, None)
            while page is not None:
                pending = self._ahead(pages) if page.truncated and page.continuation else None
                yield page
                if pending is None:
                    page = next(pages, None)
                else:
                    future, pending = pending, None
                    try:
                        page = future.result()
                    except concurrent.futures.CancelledError:  # by close(): not fetched
                        page = next(pages, None)
        finally:
            close = getattr(pages, "close", lambda: None)  # a generator's: its request's connection
            if pending is None:
                close()
            else:  # the reader stopped: the page in flight is dropped when it comes
                pending.cancel()
                pending.add_done_callback(lambda _: close())

    def _ahead(self, pages: Iterator[ListPage]) -> concurrent.futures.Future[ListPage | None] | None:
        """The next page of ``pages``, being fetched on a free thread; None if none is free."""
        if self._pool is None or not self._free.acquire(blocking=False):
            return None
        try:
            future = self._pool.submit(next, pages, None)
        except RuntimeError:  # shut down: the mount is going away
            self._free.release()
            return None
        future.add_done_callback(lambda _: self._free.release())
        return future

    def close(self) -> None:
        """No more pages ahead (the mount is going away); readers fetch their own."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
