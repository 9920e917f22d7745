"""Running a mount: recover staged files, serve FUSE, upload everything at the end."""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from s3fs_mount.fs.fuselib import FUSE, LIBFUSE_MAJOR
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions, parse_listen
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.store import RemoteStore

if TYPE_CHECKING:
    from s3fs_mount.metrics import Metrics

log = logging.getLogger(__name__)

#: Buffers of at least this size are mapped for themselves and unmapped when freed (glibc's
#: mallopt M_MMAP_THRESHOLD). Left to glibc the threshold grows to the largest buffer freed, and
#: upload parts (8-16 MiB, one per thread) then stay in every thread's arena once sent: the
#: 10 GiB write's peak RSS 183 -> 119 MiB with 16 MiB parts (bench/README.md). Below it: the
#: readers' 1 MiB blocks and libfuse's buffer for each read, from the heap.
MMAP_THRESHOLD = 4 << 20
#: Free memory at the top of the heap kept for the next allocations (M_TRIM_THRESHOLD), rather
#: than given back to the system at each free. Setting M_MMAP_THRESHOLD leaves glibc's trim
#: threshold at its 128 KiB: every 1 MiB block freed at the top was given back, and the next
#: one faulted in and zeroed 256 new pages (in the kernel's recv into it, and in libfuse's
#: memcpy of each read): ~0.3 s of a cold 1 GiB read's ~1.55 s of CPU besides its check.
TRIM_THRESHOLD = 32 << 20
#: One heap for every thread (M_ARENA_MAX). A streamed block is made by a GET thread and freed
#: by the FUSE thread that read it last; with an arena per thread each of eight GET threads'
#: arenas held (and trimmed) its own share of the window. With one, a block freed by any thread
#: is the next one any thread makes: with both, that CPU fell to ~1.0 s (boto3's download:
#: ~0.9 s) and the read's peak RSS 160 -> 135 MiB (bench/README.md). Python's own small objects
#: and the hashing take no malloc lock.
ARENAS = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_heap() -> bool:
    """Set glibc's heap for the mount's buffers (see MMAP_THRESHOLD, TRIM_THRESHOLD, ARENAS),
    before the mount's threads start; False where it cannot (not glibc, or refused)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its own allocator's ways
        return False
    done = True
    for name, param, value in (
        ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("M_ARENA_MAX", _M_ARENA_MAX, ARENAS),
    ):
        if not mallopt(param, value):
            log.debug("mallopt(%s, %d) refused", name, value)
            done = False
    return done


def freeze_startup_objects() -> None:
    """Leave what the mount made before serving (modules, its units, ~30-60k objects) out of the
    garbage collector's full passes (``gc.freeze``): they live until the unmount, and each full
    pass walked all of them again, ~20 ms once every ~1,000 small files written (4% of the FUSE
    thread's CPU there, bench/README.md round 37). Objects made later are collected as before."""
    gc.collect()  # what startup left unreachable goes now, not kept for good
    gc.freeze()


def serve(
    store: RemoteStore,
    bucket: str,
    prefix: str,
    mountpoint: str,
    options: MountOptions,
    server_full: Callable[[], str | None] | None = None,
) -> int:
    """Mount ``bucket`` (under ``prefix``) at ``mountpoint`` in this process, until unmounted.

    ``server_full`` tells why uploads fail when the server is out of space (see S3Operations).
    SIGTERM and SIGINT unmount (libfuse's handlers). Every dirty file is
    uploaded before returning. Returns 0 when nothing is left unuploaded,
    else 1 (the files named in the log stay staged for the next mount).
    """
    tune_heap()
    # The mount reaches S3 through this view only: no request of it can name another bucket.
    ops = S3Operations(Bucket(store, bucket), prefix, options, mountpoint=mountpoint, server_full=server_full)
    metrics = _metrics(store, ops, options.metrics) if options.metrics else None
    pending = ops.start()
    if pending:
        log.warning("%d staged files could not be uploaded yet: %s", len(pending), ", ".join(pending))
    where = bucket + (":/" + prefix if prefix else "")
    log.info("mounting %s at %s (libfuse %d)", where, mountpoint, LIBFUSE_MAJOR)
    freeze_startup_objects()
    try:
        FUSE(ops, mountpoint, observer=metrics, **ops.fuse_options())
    except RuntimeError as exc:
        if ops.unuploaded is None:  # destroy() never ran: it never served
            log.error("FUSE could not mount %s: %s", mountpoint, exc)
            return 1
        # Served and unmounted (destroy() ran), but libfuse's loop ended with an error: status 8
        # is fuse_main's "the loop failed" (libfuse 3.14 also ends it so on SIGTERM or SIGINT).
        log.warning("FUSE's loop at %s ended with status %s after the unmount", mountpoint, exc)
    finally:
        if metrics is not None:
            metrics.close()
    # destroy() has uploaded at unmount; without it (FUSE ended otherwise) do it here, once.
    left = ops.unuploaded if ops.unuploaded is not None else ops.finish()
    ops.stop_background()
    ops.prefetcher.close()
    ops.staging.close()
    log.info("unmounted %s: %s", mountpoint, store.connection.stats.summary())
    if left:
        log.error("%d files stay staged and upload at the next mount: %s", len(left), ", ".join(left))
        return 1
    return 0


def _metrics(store: RemoteStore, ops: S3Operations, listen: str) -> Metrics:
    """``-o metrics=HOST:PORT``: count every request and FUSE call, and serve the counts there."""
    from s3fs_mount.metrics import Metrics  # prometheus_client only when asked for

    host, port = parse_listen(listen)
    metrics = Metrics()
    metrics.watch(ops.gauges)
    try:
        metrics.serve(host, port)
    except OSError as exc:
        raise OSError("metrics cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc)) from None
    store.connection.stats.observer = metrics
    return metrics
