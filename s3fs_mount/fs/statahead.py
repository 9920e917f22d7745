"""Stat-ahead: a directory's stats in listing order answered by HEADs sent ahead of them.

A cold ``stat`` of a file is one HEAD (its mode, owner and times are
``x-amz-meta-*``, which no listing carries), and a loop of them waits for one
round trip after another. As Lustre's statahead does, when lookups that found
files follow one another in one directory in name order (the order S3 lists
and ``ls``/``find`` walk), :class:`StatAhead` lists the directory from the last
such name on (one LIST page) and HEADs the names that follow in a few threads,
so each later ``stat`` finds its answer fetched or in flight (waited for, never
asked again).

Bounds:

* A lone stat costs what it did (one HEAD): nothing is sent ahead until a
  second lookup in the same directory found a file with a later name, but for
  a stat of the first name a readdir listed (a walk that stats each entry as it
  reads them, ls -l or du, begins so): its window starts full
  (:data:`WORKERS`), at most that many HEADs lost to a stat that was not a walk's.
* The window (HEADs ahead of the last stat) starts at 2 and doubles with each
  name the stats take from it, up to :data:`MAX_WINDOW`; a directory is listed
  one page of :data:`PAGE` names at a time, only as the window needs them.
* A stat that is not the next name (nor one within the window) ends the run in
  that directory: what was fetched ahead is dropped, the rest is not sent.
* At most :data:`MAX_DIRS` directories are followed at once (least recently
  used dropped), so memory is bounded by ``MAX_DIRS * (PAGE + MAX_WINDOW)``.

A readdir that reaches a name whose HEAD went ahead takes its answer (:meth:`StatAhead.listed`)
and hands the entry out whole: a walk that stats each entry as it reads them (GNU ``ls -l``,
``du``) then has the kernel ask nothing of those entries, and the run moves on as for a stat.

Freshness: an answer fetched ahead carries when it was asked (``seen_at``);
it is used only within ``attr_ttl`` of that, as a cached HEAD would be, and
only if the namespace says nothing changed the path since (its ``_changed``
rule, asked through ``usable``); anything else is asked again.

Locks: ``_lock`` guards ``_dirs`` and every :class:`_Run`'s fields; it is never held
during a request, nor together with the namespace's lock (``usable`` and ``fetch`` are
called without it). An :class:`_Answer`'s run and cancel agree under a lock of its own; its
value is written by the one worker that runs it and read once its latch is released.

The HEADs go to the store's own sender where it has one (``head_ahead``: the connector's
request pipeline, s3/pipelined.py: one thread writing them on up to 20 non-blocking kept-alive
sockets and reading the answers as they come): an ``ls -l`` of 10,000 files took 2.19 s of the
mount's CPU with the HEADs in 20 threads, 1.95 s so (fewer thread switches and hand-offs of the
GIL; bench/README.md, round 40). Elsewhere (through a proxy; the tests' fake store) they go, as
the listing pages always do, to a few threads of :class:`_Workers`, not a ThreadPoolExecutor: its
``submit`` (a Future: a Condition, an RLock, a list; a work item; a Semaphore's Condition to see
if a thread is idle, released again after each item) took ~10% of the mount's CPU in an
``ls -l`` of 10,000 files once the HEADs themselves got cheaper (bench/README.md).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from s3fs_mount.clock import Clock
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.paths import FOLDER_SUFFIX, KeyMap, is_valid_name
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.pipelined import Pending
from s3fs_mount.s3.retry import ahead_of_need
from s3fs_mount.s3.store import ObjectInfo

log = logging.getLogger(__name__)

#: HEADs sent ahead at once (shared by all directories): the request pipeline's sockets
#: (s3/connection.py AHEAD_SOCKETS), or threads where the store has no pipeline. 8 threads
#: and a window of 32 stat'ed 1,000 files in 1.16-1.52 s, 4 and 16 in 1.31-1.87 s, none in
#: 1.92-2.70 s; on a loaded machine (a slower answer to each HEAD, not fewer at a time) 16 and
#: 64 walked 10,000 faster than 8 and 32 (bench/README.md, round 31). A thread waiting for an
#: answer holds no CPU. 20: as many as s3fs-fuse keeps in flight in its ls -l (``multireq_max``;
#: bench/README.md, rounds 38-39).
WORKERS = 20
#: Most HEADs sent ahead of the last stat in one directory (at least WORKERS: all of them busy).
MAX_WINDOW = 64
#: Names one listing page asks for.
PAGE = 128
#: Directories followed at once.
MAX_DIRS = 8


class _Answer:
    """What a call sent to the workers returns, once it has: a Future of two locks.

    ``result()`` waits for the worker to finish it, then returns its value or raises its
    exception; CancelledError if it was cancelled before a worker began it (a worker that
    has begun finishes). ``done()`` and ``cancel()`` as a Future's.

    Locks: a worker's :meth:`run` and a :meth:`cancel` (by a lookup's thread) decide under
    ``_state`` which of them came first: ``_cancelled``, ``_ran`` and ``_finished`` are
    GUARDED_BY(_state). ``_value`` and ``_error`` are written by the one worker that runs it
    before it releases ``_latch``, and read by ``result()`` only after acquiring it.
    """

    __slots__ = ("_call", "_latch", "_state", "_value", "_error", "_cancelled", "_ran", "_finished")

    def __init__(self, call: Callable[..., Any] | None, *args: Any) -> None:
        self._call: tuple[Callable[..., Any], tuple[Any, ...]] | None = (call, args) if call else None
        self._latch = threading.Lock()
        self._latch.acquire()  # released when a worker is done with it
        self._state = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        self._cancelled = False  # GUARDED_BY(_state)
        self._ran = False  # GUARDED_BY(_state)
        self._finished = False  # GUARDED_BY(_state)

    def run(self) -> None:
        """Run the call (in a worker) unless it was cancelled first, and let the waiters go."""
        with self._state:
            call, self._call = self._call, None
            ran = self._ran = call is not None and not self._cancelled
        try:
            if ran and call is not None:
                try:
                    self._value = call[0](*call[1])
                except Exception as exc:  # noqa: BLE001 - handed to the waiter, as a Future does
                    self._error = exc
        finally:
            with self._state:
                self._finished = True
            self._latch.release()

    def cancel(self) -> bool:
        """Do not run it if no worker has begun it; False if one has (it finishes)."""
        with self._state:
            if self._ran:
                return False
            self._cancelled = True
            return True

    def done(self) -> bool:
        with self._state:
            return self._finished or self._cancelled

    def result(self) -> Any:
        with self._latch:  # waits until run() is over
            pass
        if self._error is not None:
            raise self._error
        with self._state:
            ran = self._ran
        if not ran:
            raise concurrent.futures.CancelledError()
        return self._value


class _Workers:
    """A few threads running :class:`_Answer` calls in the order they were sent (started at the
    first, stopped by :meth:`shutdown`)."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._queue: queue.SimpleQueue[_Answer | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False  # GUARDED_BY(_lock)
        self._stopped = False  # GUARDED_BY(_lock)

    def submit(self, call: Callable[..., Any], *args: Any) -> _Answer:
        """``call(*args)`` in a worker; after :meth:`shutdown`, an answer cancelled at once."""
        answer = _Answer(call, *args)
        if not self._started:
            with self._lock:
                if not self._started and not self._stopped:
                    for i in range(self._count):
                        threading.Thread(
                            target=self._work, name="%s_%d" % (self._name, i), daemon=True
                        ).start()
                    self._started = True
        if self._stopped:
            answer.cancel()
            answer.run()
            return answer
        self._queue.put(answer)
        return answer

    def shutdown(self) -> None:
        """Stop the threads; what is queued is cancelled (its waiters let go), not run."""
        with self._lock:
            self._stopped = True
        while True:
            try:
                answer = self._queue.get_nowait()
            except queue.Empty:
                break
            if answer is not None:
                answer.cancel()
                answer.run()
        for _ in range(self._count):
            self._queue.put(None)

    def _work(self) -> None:
        with ahead_of_need():  # a lookup whose HEAD failed here asks again itself
            while True:
                answer = self._queue.get()
                if answer is None:
                    return
                if self._stopped:
                    answer.cancel()
                answer.run()


class _HeadSent:
    """A HEAD the store's sender sends ahead (:meth:`StatAhead._send`), as an :class:`_Answer`:
    its result is what the namespace makes of the HEAD's answer (made by the caller of
    ``result()``: a lookup's thread), ``asked`` being when it was sent for."""

    __slots__ = ("_path", "_pending", "_asked", "_convert")

    def __init__(
        self,
        path: str,
        pending: Pending[ObjectInfo],
        asked: float,
        convert: Callable[[str, ObjectInfo | None, float], A.Attributes | None],
    ) -> None:
        self._path = path
        self._pending = pending
        self._asked = asked
        self._convert = convert

    def cancel(self) -> bool:
        return self._pending.cancel()

    def done(self) -> bool:
        return self._pending.done()

    def result(self) -> A.Attributes | None:
        try:
            info: ObjectInfo | None = self._pending.result()
        except S3Error as exc:
            if not exc.not_found:
                raise
            info = None
        return self._convert(self._path, info, self._asked)


class _Run:
    """One directory being stat'ed in name order. Guarded by StatAhead._lock."""

    __slots__ = ("first", "last", "touched", "names", "ahead", "window", "listed_to", "exhausted", "listing")

    def __init__(self, name: str, now: float) -> None:
        self.first = name  # the file whose lookup began the run
        self.last = name  # the name the stats have reached
        self.touched = now  # when a lookup last moved the run (monotonic)
        self.names: deque[str] = deque()  # listed names after ``last``, not yet sent ahead
        self.ahead: OrderedDict[str, _Answer | _HeadSent] = OrderedDict()
        self.window = 0  # HEADs to keep ahead; 0: not started (one file found so far)
        self.listed_to = ""  # the last name listed so far ('': list from ``last``)
        self.exhausted = False  # the listing reached the directory's end
        self.listing = False  # a page is being listed


class StatAhead:
    """HEADs sent ahead of a directory's lookups (see the module docstring).

    :param store: the mounted bucket (its listings).
    :param keymap: the path <-> key mapping.
    :param fetch: what a HEAD of file ``path`` says (the namespace's ``_fetch``): Attributes with
        ``seen_at`` set to when it was asked, or None (no such file).
    :param usable: ``(path, asked)`` -> may an answer for ``path`` asked at ``asked`` be used
        (nothing this mount did to it since)?
    :param clock: the monotonic clock ``seen_at`` is measured by.
    :param ttl: how long an answer fetched ahead may be used (``attr_ttl``).
    :param workers: threads sending HEADs ahead; 0 turns stat-ahead off.
    :param listed: ``(parent, after, count)`` -> ``(names, final)``: up to ``count`` names of
        files of ``parent`` after ``after`` still to ask about, from a listing the namespace has
        (a readdir under way or a moment ago: ls -l, rm -r), and whether that listing is whole
        (``final``; False: a readdir under way has not listed further yet, and
        :meth:`more_listed` says when it has); or None (not known: a LIST page is asked).
    :param first_listed: ``parent`` -> the first name a readdir of it listed a moment ago (a walk
        under way, or just done), or None: a stat of that name starts the run at once.
    :param head_ahead: ``path`` -> the HEAD of file ``path`` sent by the store's own sender (the
        connector's request pipeline: one thread, many sockets), or None where it has none: then
        ``fetch`` goes to the workers.
    :param from_head: ``(path, ObjectInfo or None for a 404, asked)`` -> what ``fetch`` would
        have answered for that HEAD (needed with ``head_ahead``).
    """

    def __init__(
        self,
        store: Bucket,
        keymap: KeyMap,
        fetch: Callable[[str], A.Attributes | None],
        usable: Callable[[str, float], bool],
        clock: Clock,
        ttl: float,
        workers: int = WORKERS,
        listed: Callable[[str, str, int], tuple[list[str], bool] | None] = lambda parent, after, count: None,
        first_listed: Callable[[str], str | None] = lambda parent: None,
        head_ahead: Callable[[str], Pending[ObjectInfo] | None] = lambda path: None,
        from_head: Callable[[str, ObjectInfo | None, float], A.Attributes | None] | None = None,
    ) -> None:
        self._head_ahead = head_ahead
        self._from_head = from_head
        self._listed = listed
        self._first_listed = first_listed
        self._store = store
        self._keymap = keymap
        self._fetch = fetch
        self._usable = usable
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._dirs: OrderedDict[str, _Run] = OrderedDict()
        self._pool = _Workers(workers, "statahead") if workers > 0 else None

    def lookup(self, path: str, fetch_here: Callable[[], A.Attributes | None]) -> A.Attributes | None:
        """What S3 says of ``path``, a lookup the caches did not answer: the answer fetched ahead
        if there is a usable one, else ``fetch_here()``; the directory's run moves on."""
        if self._pool is None:
            return fetch_here()
        parent, name = KeyMap.split(path)
        future = self._take(parent, name)
        if future is not None:
            found = self._settled(path, future)
            if found is not None:
                self._advance(parent, name)
                return found
        elif name == self._first_listed(parent):
            self._begin_walk(parent, name)
        found = fetch_here()
        if found is not None and not found.is_dir:
            self._found_file(parent, name)
        return found

    def listed(self, path: str) -> A.Attributes | None:
        """A readdir is handing out ``path``: the answer sent ahead for it, if one was (waited for
        if still out), and the run moves on as for a stat of it; None if none was sent (nothing
        is sent for it here: a readdir alone asks no HEAD) or it may not be used.

        A walk that stats each entry as it reads them (ls -l, du) has the HEADs of the names after
        its last stat in flight when it reads on; its entries then go out with their attributes
        (readdirplus), and the kernel asks nothing more of them."""
        if self._pool is None:
            return None
        parent, name = KeyMap.split(path)
        with self._lock:
            run = self._dirs.get(parent)
            # Only this name's: those before it a stat may still take (it ends no run, as
            # taking a name the stats have not reached would: see _take).
            future = run.ahead.pop(name, None) if run is not None else None
        if future is None:
            return None
        found = self._settled(path, future)
        if found is not None:
            self._advance(parent, name, reading=True)
        return found

    def more_listed(self, parent: str) -> None:
        """A readdir of ``parent`` under way listed more names (a page it is about to hand out):
        a run that had sent HEADs for every name listed so far sends those of the new ones now,
        so the readdir finds them in flight (and hands their entries out whole) rather than
        passing them before a LIST page of the stat-ahead's own, queued behind the HEADs, came."""
        if self._pool is not None:
            self._fill(parent, reading=True)

    def drop(self, path: str) -> None:
        """Our own change of ``path`` (or of the tree under it): what was fetched for it goes."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            for d in [d for d in self._dirs if d == path or d.startswith(prefix)]:
                self._end(d)
            parent, name = KeyMap.split(path)
            run = self._dirs.get(parent)
            future = run.ahead.pop(name, None) if run is not None else None
        if future is not None:
            future.cancel()

    def close(self) -> None:
        """Stop sending (the mount is going away): what is queued is not sent."""
        with self._lock:
            for d in list(self._dirs):
                self._end(d)
        if self._pool is not None:
            self._pool.shutdown()

    def followed(self) -> list[str]:
        """The directories whose lookups are followed now."""
        with self._lock:
            return list(self._dirs)

    # -- the run of one directory ----------------------------------------------------------

    def _take(self, parent: str, name: str) -> _Answer | _HeadSent | None:
        """The answer sent ahead for ``name``, taken out of its run; None if there is none (the
        run goes on if ``name`` is where it was going, else it ends)."""
        with self._lock:
            run = self._dirs.get(parent)
            if run is None or name == run.last:
                return None
            if name in run.ahead:  # stats that skip a name or two stay in the run
                while True:
                    first, future = run.ahead.popitem(last=False)
                    if first == name:
                        return future
                    future.cancel()
            if name > run.last and not run.ahead:
                self._move_to(run, name)  # asked by the lookup itself: not sent ahead too
                return None
            self._end(parent)  # the stats went elsewhere
            return None

    def _settled(
        self, path: str, future: _Answer | _HeadSent | concurrent.futures.Future[A.Attributes | None]
    ) -> A.Attributes | None:
        """The answer of ``future`` if it may still be used (in time, nothing changed since)."""
        try:
            found = future.result()
        except concurrent.futures.CancelledError:
            return None
        except Exception as exc:  # noqa: BLE001 - the lookup asks again itself, and reports
            log.debug("stat-ahead of %s failed (%s): asked again", path, exc)
            return None
        if found is None:
            return None  # gone since the listing: the lookup asks (and says ENOENT) itself
        if self._clock.monotonic() - found.seen_at >= self._ttl or not self._usable(path, found.seen_at):
            return None
        return found

    def _begin_walk(self, parent: str, name: str) -> None:
        """A stat of the first name a readdir of ``parent`` listed: the walk's next names' HEADs go
        now, beside this one's (a window of WORKERS), not after two stats' round trips and a
        window grown from 2 (GNU ls -l stats the 16 entries of the first readdir reply one by
        one before it reads on: bench/README.md, round 37)."""
        now = self._clock.monotonic()
        with self._lock:
            run = self._dirs.get(parent)
            if run is not None and run.window and now - run.touched <= self._ttl:
                return  # a run under way there (a stat that is not this walk's first)
            if run is not None:
                self._end(parent)
            run = self._dirs[parent] = _Run(name, now)
            run.window = WORKERS
            while len(self._dirs) > MAX_DIRS:
                self._end(next(iter(self._dirs)))
        self._fill(parent)

    def _found_file(self, parent: str, name: str) -> None:
        """A lookup in ``parent`` found file ``name`` with a request of its own."""
        now = self._clock.monotonic()
        with self._lock:
            run = self._dirs.get(parent)
            if run is None or name < run.first or now - run.touched > self._ttl:
                self._dirs[parent] = _Run(name, now)  # one file: nothing sent ahead yet
                self._dirs.move_to_end(parent)
                while len(self._dirs) > MAX_DIRS:
                    self._end(next(iter(self._dirs)))
                return
            if name == run.first:
                return
            run.window = max(2, run.window)  # a second file, later in name order: start
            self._move_to(run, name)
            run.touched = now
            self._dirs.move_to_end(parent)
        self._fill(parent)

    def _advance(self, parent: str, name: str, reading: bool = False) -> None:
        """A stat (``reading``: the readdir) took ``name`` from the window: the window grows, and
        more is sent."""
        with self._lock:
            run = self._dirs.get(parent)
            if run is None:
                return
            run.window = min(MAX_WINDOW, run.window * 2)
            self._move_to(run, name)
            run.touched = self._clock.monotonic()
            self._dirs.move_to_end(parent)
        self._fill(parent, reading)

    @staticmethod
    def _move_to(run: _Run, name: str) -> None:
        """The stats reached ``name``: listed names up to it are passed (caller holds _lock)."""
        if name > run.last:
            run.last = name
        while run.names and run.names[0] <= name:
            run.names.popleft()
        if run.listed_to and run.listed_to < name:
            run.listed_to = ""  # past what was listed: list again from here
            run.exhausted = False

    def _fill(self, parent: str, reading: bool = False) -> None:
        """Send HEADs until the window is full; list a page more (in the pool) when names run out.

        ``reading``: the readdir the names come from is the caller (it handed an entry out, or
        listed more): where it has listed no further yet, the next names come when it does
        (:meth:`more_listed`), not from a LIST page. A stat's call lists a page there (a
        readdir that stopped early lists no more)."""
        assert self._pool is not None
        with self._lock:
            run = self._dirs.get(parent)
            if run is None:
                return
            while run.names and len(run.ahead) < run.window:
                name = run.names.popleft()
                run.ahead[name] = self._send(KeyMap.join(parent, name))
            if len(run.ahead) >= run.window or run.exhausted or run.listing:
                return
            run.listing = True
            after = run.listed_to or run.last
        # Names a listing the namespace has already holds are taken here, at once: queued behind
        # the HEADs, a readdir handing entries out whole would pass some before they came.
        known = self._listed(parent, after, PAGE)
        if known is not None and (known[1] or known[0] or reading):
            self._add_names(parent, run, after, known[0], known[1], reading)
        else:
            self._pool.submit(self._list_page, parent, run, after)

    def _send(self, path: str) -> _Answer | _HeadSent:
        """The HEAD of file ``path`` sent ahead: by the store's sender if it has one (one thread
        for all: a HEAD cost ~2/3 of the CPU it does in the workers, bench/README.md round 40),
        else by a worker (caller holds _lock)."""
        assert self._pool is not None
        if self._from_head is not None:
            asked = self._clock.monotonic()
            pending = self._head_ahead(path)
            if pending is not None:
                return _HeadSent(path, pending, asked, self._from_head)
        return self._pool.submit(self._fetch, path)

    def _list_page(self, parent: str, run: _Run, after: str) -> None:
        """One LIST page of ``parent``'s files after ``after`` into the run's names."""
        with self._lock:
            if self._dirs.get(parent) is not run:
                return  # dropped while queued (rmdir of it: rm -r's next directory is under way)
        try:
            names, final = self._files_after(parent, after)
        except Exception as exc:  # noqa: BLE001 - only an optimisation: the stats go on alone
            log.debug("stat-ahead listing of %s failed (%s)", parent, exc)
            with self._lock:
                if self._dirs.get(parent) is run:
                    self._end(parent)
            return
        self._add_names(parent, run, after, names, final)

    def _add_names(
        self, parent: str, run: _Run, after: str, names: list[str], final: bool, reading: bool = False
    ) -> None:
        """Listed names of ``parent``'s files after ``after`` into the run's names; more sent.
        ``final``: fewer than a page means the directory's end; else (a readdir under way) the
        names after these are asked for again when it lists more (:meth:`more_listed`)."""
        with self._lock:
            run.listing = False
            if self._dirs.get(parent) is not run:
                return
            tail = run.names[-1] if run.names else run.last
            fresh = [n for n in names if n > tail and n not in run.ahead]
            run.names.extend(fresh)
            run.listed_to = names[-1] if names else after
            run.exhausted = final and (len(names) < PAGE or not fresh)
        if fresh or final:
            self._fill(parent, reading)

    def _files_after(self, parent: str, after: str) -> tuple[list[str], bool]:
        """The names of files in directory ``parent`` after ``after``, one page (no directories),
        and whether the listing they come from is whole: from a listing the namespace has (a
        readdir under way, or done a moment ago), else one LIST page."""
        known = self._listed(parent, after, PAGE)
        if known is not None and (known[1] or len(known[0]) == PAGE):
            return known
        prefix = self._keymap.dir_prefix(parent)
        page = next(self._store.list(prefix, delimiter="/", max_keys=PAGE, start_after=prefix + after))
        names = []
        for entry in page.entries:
            rest = entry.key[len(prefix) :]
            if rest and not rest.endswith(FOLDER_SUFFIX) and is_valid_name(rest):
                names.append(rest)
        return names, True

    def _end(self, parent: str) -> None:
        """Stop following ``parent``: what is queued is not sent (caller holds _lock)."""
        run = self._dirs.pop(parent, None)
        if run is not None:
            for future in run.ahead.values():
                future.cancel()
            run.ahead.clear()
            run.names.clear()
