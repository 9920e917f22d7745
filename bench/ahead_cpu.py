#!/usr/bin/env python3
"""CPU per HEAD sent ahead: 20 threads each sending one at a time (the stat-ahead's workers, as
before round 40) against the connector's request pipeline (one thread, 20 sockets).

Against a local SeaweedFS that it starts and stops itself (by PID)::

    python bench/ahead_cpu.py [--n 2000] [--rounds 3]

Each round HEADs the same ``n`` keys three ways, in this process, order alternating round by
round: ``threads`` (20 threads of ``RemoteStore.head``), ``pipeline`` (``head_ahead`` of all of
them, then each answer taken), ``walk`` (``head_ahead`` kept 20 ahead of a taker that waits for
each answer in order, as ``ls -l``'s stats do). CPU is ``time.process_time`` (this process: the
client's, not the server's), per HEAD; medians over rounds. See bench/README.md, round 40.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from s3fs_mount.localserver import LocalS3Server  # noqa: E402
from s3fs_mount.s3 import RemoteStore, S3Connection, S3Name  # noqa: E402

BUCKET = "ahead"
AT_ONCE = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000, help="HEADs per way per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="s3fs-ahead-")
    server = LocalS3Server(os.path.join(tmp.name, "weed"))
    server.start(timeout=120)
    try:
        connection = S3Connection(
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
            endpoint=server.endpoint,
            tls=False,
            default_bucket=BUCKET,
        )
        store = RemoteStore(connection)
        connection.request("PUT", BUCKET)
        names = [S3Name("d/f%05d" % i, BUCKET) for i in range(args.n)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: store.put(name, b"x", {"x-amz-meta-mode": "33188"}), names))

        def threads() -> None:
            todo: queue.SimpleQueue[S3Name] = queue.SimpleQueue()
            for name in names:
                todo.put(name)

            def work() -> None:
                while True:
                    try:
                        name = todo.get_nowait()
                    except queue.Empty:
                        return
                    store.head(name)

            workers = [threading.Thread(target=work) for _ in range(AT_ONCE)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        def pipeline() -> None:
            for pending in [store.head_ahead(name) for name in names]:
                assert pending is not None
                pending.result()

        def walk() -> None:
            ahead: deque = deque()
            for name in names:
                ahead.append(store.head_ahead(name))
                if len(ahead) >= AT_ONCE:
                    ahead.popleft().result()
            while ahead:
                ahead.popleft().result()

        ways: list[tuple[str, Callable[[], None]]] = [
            ("threads", threads),
            ("pipeline", pipeline),
            ("walk", walk),
        ]
        cpu: dict[str, list[float]] = {way: [] for way, _ in ways}
        for rnd in range(args.rounds):
            for way, run in ways if rnd % 2 == 0 else ways[::-1]:
                started, wall = time.process_time(), time.monotonic()
                run()
                us = (time.process_time() - started) / len(names) * 1e6
                cpu[way].append(us)
                load = open("/proc/loadavg").read().split()[0]
                print(
                    "round %d %-9s %6.1f us CPU a HEAD  %.2f s  load %s"
                    % (rnd + 1, way, us, time.monotonic() - wall, load),
                    flush=True,
                )
        for way, figures in cpu.items():
            print("median %-9s %6.1f us CPU a HEAD" % (way, statistics.median(figures)))
        print(connection.stats.summary())
    finally:
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
