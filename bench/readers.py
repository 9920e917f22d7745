"""Readers racing writers on any directory (a mount or a local disk), counted, not asserted.

What tests/test_model_workload.py's readers test may assert is what a local disk gives, so the
same pattern is run on both here and the events counted (bench/README.md, round 34)::

    python bench/readers.py tear DIR 200000   # whole-page pwrites vs 4 KiB preads: torn reads
    python bench/readers.py sizes DIR 20      # an O_APPEND writer vs readers that reopen and
                                              # stat/fstat/read: sizes going back, page-cut sizes
    python bench/readers.py truncate DIR 5    # an O_APPEND writer vs truncate(0) by path every
                                              # 10 ms vs a reader: reads holding zeros

``tear``: one process overwrites 4 pages with whole-page ``pwrite``s, each page one byte value,
while two read them a page at a time; a read holding two values is torn. ``sizes``: one
process appends 400 records of 1,000 bytes (``fsync`` every 50) while three reopen the file
for each ``stat``, ``fstat`` or read to the end; a ``stat``/``fstat`` smaller than one the same
reader saw before went back, and a size that is no multiple of 1,000 is a write() seen half
done (the kernel sends a write that crosses a page end of the file as two). ``truncate``: the
same appends (``DELAY`` seconds after each, for a local disk to run as long as a mount) while
another process truncates the file to 0 by path every 10 ms and a third reads it whole: a
read holding a zero byte (records have none) got the length before a truncate, zeros past
the new end (README "Consistency": the one difference from ext4 it names).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

PAGE = 4096
PAGES = 4
RECORD = 1000
RECORDS = 400
FORK = multiprocessing.get_context("fork")


def _page_writer(path: str, writes: int, done: Event) -> None:
    fd = os.open(path, os.O_RDWR)
    for i in range(writes):
        os.pwrite(fd, bytes([i % 255 + 1]) * PAGE, (i % PAGES) * PAGE)
    os.close(fd)
    done.set()


def _page_reader(path: str, done: Event, out: Queue) -> None:
    fd = os.open(path, os.O_RDONLY)
    torn = reads = 0
    while not done.is_set():
        data = os.pread(fd, PAGE, (reads % PAGES) * PAGE)
        torn += data != data[:1] * PAGE
        reads += 1
    os.close(fd)
    out.put((torn, reads))


def tear(directory: str, writes: int) -> str:
    path = os.path.join(directory, "tear")
    with open(path, "wb") as f:
        f.write(b"\1" * PAGE * PAGES)
    out, done = FORK.Queue(), FORK.Event()
    procs = [FORK.Process(target=_page_writer, args=(path, writes, done))]
    procs += [FORK.Process(target=_page_reader, args=(path, done, out)) for _ in range(2)]
    began = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    counts = [out.get() for _ in range(2)]
    return "%s: %d whole-page writes, %d torn of %d reads, %.1f s" % (
        directory, writes, sum(c[0] for c in counts), sum(c[1] for c in counts), time.monotonic() - began)


def _appender(path: str, done: Event) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    for i in range(RECORDS):
        os.write(fd, b"x" * RECORD)
        if i % 50 == 49:
            os.fsync(fd)
    os.close(fd)
    done.set()


def _size_reader(path: str, k: int, done: Event, out: Queue) -> None:
    back = cut = calls = last = 0
    fd = os.open(path, os.O_RDONLY)
    while not done.is_set() or calls < 20:
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        how = (calls + k) % 3
        if how == 2:  # a read to the end: it may end before a size a stat showed (ext4 too)
            size = 0
            while chunk := os.pread(fd, 1 << 20, size):
                size += len(chunk)
        else:
            size = os.stat(path).st_size if how == 0 else os.fstat(fd).st_size
            back += size < last
            last = max(last, size)
        cut += size % RECORD != 0
        calls += 1
    os.close(fd)
    out.put((back, cut, calls))


def sizes(directory: str, runs: int) -> str:
    path = os.path.join(directory, "appended")
    total = [0, 0, 0]
    went_back = 0
    for _ in range(runs):
        open(path, "wb").close()
        out, done = FORK.Queue(), FORK.Event()
        procs = [FORK.Process(target=_appender, args=(path, done))]
        procs += [FORK.Process(target=_size_reader, args=(path, k, done, out)) for k in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        counts = [out.get() for _ in range(3)]
        went_back += any(c[0] for c in counts)
        total = [t + sum(c[i] for c in counts) for i, t in enumerate(total)]
    return "%s: %d runs, %d with a size going back (%d times), %d sizes cut at a page, %d calls" % (
        directory, runs, went_back, total[0], total[1], total[2])


def _paced_appender(path: str, done: Event) -> None:
    delay = float(os.environ.get("DELAY", "0"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    for i in range(RECORDS):
        os.write(fd, (b"%06d" % i).ljust(RECORD, b"r"))
        if i % 50 == 49:
            os.fsync(fd)
        time.sleep(delay)
    os.close(fd)
    done.set()


def _truncator(path: str, done: Event) -> None:
    while not done.is_set():
        os.truncate(path, 0)
        time.sleep(0.01)


def _whole_reader(path: str, done: Event, out: Queue) -> None:
    zeros = reads = 0
    while not done.is_set():
        with open(path, "rb") as f:
            zeros += b"\0" in f.read()
        reads += 1
    out.put((zeros, reads))


def truncate(directory: str, runs: int) -> str:
    path = os.path.join(directory, "truncated")
    zeros = reads = bad_runs = 0
    for _ in range(runs):
        open(path, "wb").close()
        out, done = FORK.Queue(), FORK.Event()
        procs = [FORK.Process(target=_paced_appender, args=(path, done)),
                 FORK.Process(target=_truncator, args=(path, done)),
                 FORK.Process(target=_whole_reader, args=(path, done, out))]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        z, r = out.get()
        zeros, reads, bad_runs = zeros + z, reads + r, bad_runs + bool(z)
    return "%s: %d runs, %d with zeros read, %d reads of %d held zeros" % (
        directory, runs, bad_runs, zeros, reads)


if __name__ == "__main__":
    mode, directory, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print({"tear": tear, "sizes": sizes, "truncate": truncate}[mode](directory, n))
