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

A directory's **first** page can be asked for before its reader comes
(:meth:`ListAhead.begin`, :meth:`ListAhead.resume`): ``rm -r`` looks a
directory up (a HEAD of its holder, for its stored mode) and then reads it (a
LIST), one round trip after the other; begun at the lookup, the LIST goes side
by side with the HEAD. At most :data:`BEGUN` such listings are kept, each for
its reader to take within the caller's freshness bound; one not taken is
closed when it is pushed out or dropped.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Iterator

from s3fs_mount.s3.xmlparse import ListPage

#: Listing pages fetched ahead at once (over all directories being read).
WORKERS = 4
#: Listings whose first page was asked for before their reader came, kept at once.
BEGUN = 8


class _Begun:
    """A listing whose first page is being fetched for a reader yet to come (immutable)."""

    __slots__ = ("asked", "pages", "first")

    def __init__(
        self, asked: float, pages: Iterator[ListPage], first: concurrent.futures.Future[ListPage | None]
    ) -> None:
        self.asked = asked
        self.pages = pages
        self.first = first

    def close(self) -> None:
        """Not taken: its request's connection is given back once the page in flight has come."""
        self.first.cancel()
        close = getattr(self.pages, "close", lambda: None)
        self.first.add_done_callback(lambda _: close())

    def resumed(self) -> Iterator[ListPage]:
        """The listing, its first page as fetched (or its error raised), then the rest."""
        try:
            try:
                page = self.first.result()
            except concurrent.futures.CancelledError:  # by close(): not fetched
                page = next(self.pages, None)
            if page is not None:
                yield page
                yield from self.pages
        finally:
            getattr(self.pages, "close", lambda: None)()


class ListAhead:
    """Fetches listing pages one ahead of their readers on up to ``workers`` threads (0: none).

    Locks: ``_free`` (a semaphore) counts the threads free; the executor is thread-safe;
    ``_lock`` guards ``_begun``. Immutable after __init__: ``workers``.
    """

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._free = threading.BoundedSemaphore(max(workers, 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "list-ahead") if workers > 0 else None
        self._lock = threading.Lock()
        self._begun: OrderedDict[str, _Begun] = OrderedDict()  # GUARDED_BY(_lock), oldest first

    def begin(self, name: str, pages: Iterator[ListPage], asked: float) -> bool:
        """Fetch the first page of ``pages`` (the listing of ``name``, sent at ``asked``) for a
        reader to :meth:`resume`; False (nothing sent) if no thread is free or one is begun."""
        with self._lock:
            if name in self._begun:
                return False
        first = self._ahead(pages)
        if first is None:
            return False
        pushed: list[_Begun] = []
        with self._lock:
            old = self._begun.pop(name, None)
            self._begun[name] = _Begun(asked, pages, first)
            while len(self._begun) > BEGUN:
                pushed.append(self._begun.popitem(last=False)[1])
        for begun in ([old] if old is not None else []) + pushed:
            begun.close()
        return True

    def resume(self, name: str, since: float) -> tuple[float, Iterator[ListPage]] | None:
        """The listing of ``name`` begun at or after ``since``: (when it was sent, its pages);
        None if there is none (one older is dropped)."""
        with self._lock:
            begun = self._begun.pop(name, None)
        if begun is None:
            return None
        if begun.asked < since:
            begun.close()
            return None
        return begun.asked, begun.resumed()

    def drop(self, name: str, tree: bool = False) -> None:
        """Forget the listing begun of ``name`` (with ``tree``: and of those under it)."""
        under = name.rstrip("/") + "/"
        with self._lock:
            names = [n for n in self._begun if n == name or (tree and n.startswith(under))]
            dropped = [self._begun.pop(n) for n in names]
        for begun in dropped:
            begun.close()

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
        with self._lock:
            dropped, self._begun = list(self._begun.values()), OrderedDict()
        for begun in dropped:
            begun.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
