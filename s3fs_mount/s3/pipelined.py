"""One thread sending many requests at once over non-blocking kept-alive sockets (a walk's HEADs).

An ``ls -l`` is one LIST and a HEAD per file (a listing has no mode, owner or times), sent ahead
of the stats by the stat-ahead (fs/statahead.py), 20 at a time. Sent by 20 threads, each a
blocking exchange, a HEAD cost 117 us of this process's CPU; written by one thread on up to 20
non-blocking sockets, the answers read as they come, 94 us (bench/ahead_cpu.py), and the mount's
CPU for ``ls -l`` of 10,000 files fell by a tenth (2.19 -> 1.95 s, the same tree with it off and on):
fewer thread switches and hand-offs of the GIL on 2 cores. Where many more threads than cores are
runnable, the one thread gets one share of the CPU: at load 30 the walk took longer (bench/README.md,
round 40).

:class:`Pipeline` is the wire alone: its sockets are the
:class:`~s3fs_mount.s3.keepalive.KeptAlivePool`'s every other request uses (taken when work comes,
given back when none came for :data:`LINGER` s), a request's bytes are written whole and its
answer's head is read; only answers without a body (a HEAD's); one request at a time on a socket
(no HTTP pipelining: S3 does not promise it). What to send and what an answer means is the
:class:`Exchange`'s: the connector signs, counts and retries
(:meth:`~s3fs_mount.s3.connection.S3Connection.send_ahead`). Failures are handed to it as the
urllib3 exceptions :meth:`KeptAlivePool.exchange` raises for them; nothing here sends a request twice.

Locks: ``Pipeline._lock`` guards the queue and what says whether the thread runs and sleeps; the
sockets the thread holds are its alone. A :class:`Pending`'s ``_state`` decides between the
sender's :meth:`Pending.start` and a :meth:`Pending.cancel`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import selectors
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

import urllib3

from s3fs_mount.s3.keepalive import MAX_HEAD, RECV, Headers, KeptAlivePool, PooledSocket, parse_head

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds the thread waits for more work, holding its sockets, before it gives them back to the
#: pool and ends (a walk's HEADs come in bursts, as its stats take the answers).
LINGER = 1.0


def _aborted(why: object) -> urllib3.exceptions.ProtocolError:
    """What urllib3 raises for a connection that broke (``why``: the OSError, or a sentence)."""
    return urllib3.exceptions.ProtocolError("Connection aborted.", why)


class Pending(Generic[T]):
    """An answer to come, as a Future of two locks: :meth:`result` waits for it and returns its
    value or raises its exception (CancelledError if it was cancelled before it was sent);
    :meth:`cancel` keeps it from being sent if it was not yet (False if it was: it finishes).

    Locks: the sender's :meth:`start` and a :meth:`cancel` decide under ``_state`` which came first
    (``_started``, ``_cancelled``: GUARDED_BY(_state)). ``_value`` and ``_error`` are written once,
    by the sender, before it releases ``_latch`` (:meth:`settle`); read after acquiring it.
    """

    __slots__ = ("_latch", "_state", "_value", "_error", "_started", "_cancelled")

    def __init__(self) -> None:
        self._latch = threading.Lock()
        self._latch.acquire()  # released once settled or cancelled
        self._state = threading.Lock()
        self._value: Any = None  # written once, before _latch is released
        self._error: BaseException | None = None  # (as _value)
        self._started = False  # GUARDED_BY(_state)
        self._cancelled = False  # GUARDED_BY(_state)

    def start(self) -> bool:
        """The sender is about to send it: False if it was cancelled first (then it is over)."""
        with self._state:
            if self._cancelled:
                return False
            self._started = True
            return True

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Its outcome (by the sender, once, after :meth:`start`): the waiters go."""
        self._value, self._error = value, error
        self._latch.release()

    def cancel(self) -> bool:
        """Do not send it if it was not yet; False if it was (it finishes)."""
        with self._state:
            if self._started:
                return False
            if self._cancelled:
                return True
            self._cancelled = True
        self._latch.release()
        return True

    def done(self) -> bool:
        return not self._latch.locked()

    def result(self) -> T:
        with self._latch:  # waits until settled or cancelled
            pass
        if self._error is not None:
            raise self._error
        if self._cancelled:
            raise concurrent.futures.CancelledError()
        return self._value  # type: ignore[no-any-return]


class Exchange(Protocol):
    """One request a :class:`Pipeline` sends, and what becomes of its answer (called in its thread)."""

    def begin(self) -> tuple[str, int, bytes] | None:
        """A socket is free for it: ``(host, port, the request's bytes)``; None: it is not to be
        sent (cancelled, or refused: it has settled itself). Never raises: its waiter would wait
        for ever."""

    def answered(self, status: int, headers: Headers) -> None:
        """Its answer came (a status and headers; no body)."""

    def failed(self, exc: urllib3.exceptions.HTTPError) -> None:
        """It got no answer: ``exc`` as :meth:`KeptAlivePool.exchange` raises it."""


class _Wire:
    """A socket the pipeline's thread holds: the exchange on it, bytes still to write, bytes read
    of its answer, when the next byte is due (monotonic). The thread's alone."""

    __slots__ = ("conn", "where", "exchange", "out", "got", "deadline", "writing")

    def __init__(self, conn: PooledSocket, where: tuple[str, int]) -> None:
        self.conn = conn
        self.where = where
        self.exchange: Exchange | None = None
        self.out = b""
        self.got = b""
        self.deadline = 0.0
        self.writing = False  # registered for room to write too


class Pipeline:
    """One thread sending the :class:`Exchange` s given to :meth:`submit` in order, up to
    ``sockets`` of them at once, each on a socket of ``pool`` of its own.

    :param pool: the kept-alive connections (taken, set non-blocking, given back).
    :param sockets: most exchanges under way at once.
    :param around: a context the thread runs in (the connector's ``ahead_of_need``).

    ::

        >>> pipeline = Pipeline(pool, 20)
        >>> pipeline.submit(exchange)   # exchange.begin(), then .answered() or .failed(), in its thread
    """

    def __init__(
        self,
        pool: KeptAlivePool,
        sockets: int,
        around: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        name: str = "pipeline",
    ) -> None:
        self._pool = pool  # immutable (as the three below)
        self._sockets = sockets
        self._around = around
        self._name = name
        self._lock = threading.Lock()
        self._queue: deque[Exchange] = deque()  # GUARDED_BY(_lock)
        self._running = False  # GUARDED_BY(_lock): the thread is there (or starting)
        self._asleep = False  # GUARDED_BY(_lock): the thread waits in select: a submit wakes it
        self._woken = False  # GUARDED_BY(_lock): a byte is in the wake-up pipe
        self._wake: int | None = None  # GUARDED_BY(_lock): the pipe's write end while running

    def submit(self, exchange: Exchange) -> None:
        """Send ``exchange`` when a socket is free (its calls come in the pipeline's thread)."""
        with self._lock:
            self._queue.append(exchange)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
                return
            if not self._asleep or self._woken or self._wake is None:
                return
            self._woken = True
            wake = self._wake
        try:
            os.write(wake, b"w")
        except OSError:  # (the thread has just ended: the next submit starts another)
            pass

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, None)
        with self._lock:
            self._wake = wake_w
        busy: list[_Wire] = []
        spare: dict[tuple[str, int], list[_Wire]] = {}
        try:
            with self._around():
                self._loop(selector, wake_r, busy, spare)
        except BaseException:
            log.exception("the request pipeline stopped")
            with self._lock:
                self._running = False
                lost, self._queue = list(self._queue), deque()
            for wire in busy:
                if wire.exchange is not None:
                    lost.append(wire.exchange)
                self._drop(wire, selector)
            for exchange in lost:
                self._fail(exchange, _aborted("pipeline stopped"))
            raise
        finally:
            for wires in spare.values():
                for wire in wires:
                    self._give_back(wire, selector)
            selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _loop(
        self,
        selector: selectors.BaseSelector,
        wake_r: int,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
    ) -> None:
        """Start what is queued while sockets are free; wait for answers, sockets to write on,
        new work; end after :data:`LINGER` s with nothing to do."""
        timeout = self._pool.timeout
        active = time.monotonic()
        while True:
            with self._lock:
                starting = []
                while self._queue and len(busy) + len(starting) < self._sockets:
                    starting.append(self._queue.popleft())
            now = time.monotonic()
            for exchange in starting:
                self._start(exchange, selector, busy, spare, now + timeout)
            if busy or starting:
                active = now
            with self._lock:
                if self._queue and len(busy) < self._sockets:
                    continue  # more came meanwhile
                if not busy and now - active >= LINGER:
                    self._running, self._wake = False, None
                    return
                self._asleep = True
            wait = min(w.deadline for w in busy) - now if busy else active + LINGER - now
            events = selector.select(max(0.0, wait))
            with self._lock:
                self._asleep = False
                woken, self._woken = self._woken, False
            if woken:
                try:
                    os.read(wake_r, 64)
                except BlockingIOError:
                    pass
            now = time.monotonic()
            for key, mask in events:
                wire = key.data
                if wire is None:
                    continue  # the wake-up pipe
                if wire.exchange is None:  # an idle socket readable: the server closed it
                    idle = spare.get(wire.where, [])
                    if wire in idle:
                        idle.remove(wire)
                        self._drop(wire, selector)
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(wire, selector, busy, spare)
                if mask & selectors.EVENT_READ and wire.exchange is not None:
                    self._read(wire, selector, busy, spare, now + timeout)
            for wire in [w for w in busy if w.deadline <= now]:
                exchange = self._end(wire, busy)
                self._drop(wire, selector)
                self._fail(
                    exchange,
                    urllib3.exceptions.ReadTimeoutError(
                        None,
                        wire.where[0],
                        "Read timed out. (read timeout=%s)" % timeout,  # type: ignore[arg-type]
                    ),
                )

    def _start(
        self,
        exchange: Exchange,
        selector: selectors.BaseSelector,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
        deadline: float,
    ) -> None:
        """``exchange`` on a socket: a spare one to its host, else one from the pool."""
        try:
            target = exchange.begin()
        except Exception:  # noqa: BLE001 - begin settles itself; a bug in it must not stop the others
            log.exception("a request for the pipeline could not begin")
            return
        if target is None:
            return
        host, port, data = target
        where = (host, port)
        idle = spare.get(where)
        wire = None
        while idle and wire is None:
            wire = idle.pop()
            if not wire.conn.alive():  # the server closed it while idle (before select said so)
                self._drop(wire, selector)
                wire = None
        if wire is None:
            try:
                conn = self._pool.take(host, port)
            except urllib3.exceptions.HTTPError as exc:
                self._fail(exchange, exc)
                return
            try:
                conn.sock.setblocking(False)
                wire = _Wire(conn, where)
                wire.got, conn.pending = conn.pending, b""
                selector.register(conn.sock, selectors.EVENT_READ, wire)
            except (OSError, ValueError) as exc:
                conn.close()
                self._fail(exchange, _aborted(exc))
                return
        wire.exchange, wire.out, wire.deadline = exchange, data, deadline
        busy.append(wire)
        self._write(wire, selector, busy, spare)

    def _write(
        self,
        wire: _Wire,
        selector: selectors.BaseSelector,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
    ) -> None:
        """What is left of the request, as much as the socket takes; the rest when it has room."""
        try:
            sent = wire.conn.sock.send(wire.out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except ssl.SSLError as exc:
            self._broken(wire, selector, busy, spare, urllib3.exceptions.SSLError(exc))
            return
        except OSError as exc:
            self._broken(wire, selector, busy, spare, _aborted(exc))
            return
        left = wire.out[sent:]
        if bool(left) != wire.writing:  # (wait for room to write, or no longer)
            self._watch(wire, selector, bool(left))
        wire.out = left

    @staticmethod
    def _watch(wire: _Wire, selector: selectors.BaseSelector, writing: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        selector.modify(wire.conn.sock, events, wire)
        wire.writing = writing

    def _read(
        self,
        wire: _Wire,
        selector: selectors.BaseSelector,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
        deadline: float,
    ) -> None:
        """What came of the answer; once its head is whole, the exchange is told, and the socket
        kept for the next (or closed, if the server says so)."""
        sock = wire.conn.sock
        try:
            while True:
                try:
                    more = sock.recv(RECV)
                except (BlockingIOError, ssl.SSLWantReadError):
                    return  # the rest comes later
                if not more:
                    raise urllib3.exceptions.ProtocolError(
                        "Connection aborted.", "Remote end closed connection without response"
                    )
                wire.got += more
                wire.deadline = deadline
                while True:
                    end = wire.got.find(b"\r\n\r\n")
                    if end < 0:
                        if len(wire.got) > MAX_HEAD:
                            raise _aborted("response head too long")
                        break
                    status, headers, keep = parse_head(wire.got[:end])
                    wire.got = wire.got[end + 4 :]
                    if not (100 <= status < 200 and status != 101):  # (a Continue: the answer follows)
                        self._answered(wire, selector, busy, spare, status, headers, keep)
                        return
        except ssl.SSLError as exc:
            self._broken(wire, selector, busy, spare, urllib3.exceptions.SSLError(exc))
        except OSError as exc:
            self._broken(wire, selector, busy, spare, _aborted(exc))
        except urllib3.exceptions.HTTPError as exc:
            self._broken(wire, selector, busy, spare, exc)

    def _answered(
        self,
        wire: _Wire,
        selector: selectors.BaseSelector,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
        status: int,
        headers: Headers,
        keep: bool,
    ) -> None:
        exchange = self._end(wire, busy)
        if keep and not wire.got and status != 101:  # (bytes past a HEAD's answer: out of step)
            if wire.writing:
                self._watch(wire, selector, False)
            spare.setdefault(wire.where, []).append(wire)
        else:
            self._drop(wire, selector)
        try:
            exchange.answered(status, headers)
        except Exception:  # noqa: BLE001 - the exchange settles itself; a bug in it must not stop the others
            log.exception("an answer of the pipeline could not be taken")

    def _broken(
        self,
        wire: _Wire,
        selector: selectors.BaseSelector,
        busy: list[_Wire],
        spare: dict[tuple[str, int], list[_Wire]],
        exc: urllib3.exceptions.HTTPError,
    ) -> None:
        """The socket of ``wire`` failed: closed, with the idle ones to the same host (the server
        may have restarted: all are as dead, as the pool clears itself), and its exchange told."""
        exchange = self._end(wire, busy)
        self._drop(wire, selector)
        for idle in spare.pop(wire.where, []):
            self._drop(idle, selector)
        self._fail(exchange, exc)

    @staticmethod
    def _end(wire: _Wire, busy: list[_Wire]) -> Exchange:
        exchange = wire.exchange
        assert exchange is not None
        wire.exchange, wire.out = None, b""
        busy.remove(wire)
        return exchange

    @staticmethod
    def _fail(exchange: Exchange, exc: urllib3.exceptions.HTTPError) -> None:
        try:
            exchange.failed(exc)
        except Exception:  # noqa: BLE001 - the exchange settles itself; a bug in it must not stop the others
            log.exception("a failure of the pipeline could not be taken")

    @staticmethod
    def _drop(wire: _Wire, selector: selectors.BaseSelector) -> None:
        try:
            selector.unregister(wire.conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        wire.conn.close()

    def _give_back(self, wire: _Wire, selector: selectors.BaseSelector) -> None:
        """An idle socket back to the pool, blocking again with the pool's timeout."""
        try:
            selector.unregister(wire.conn.sock)
            wire.conn.sock.settimeout(self._pool.timeout)
        except (KeyError, ValueError, OSError):
            wire.conn.close()
            return
        wire.conn.pending = wire.got
        self._pool.give_back(wire.where[0], wire.where[1], wire.conn)
