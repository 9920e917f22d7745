"""Running a mount: recover staged files, serve FUSE, upload everything at the end."""

from __future__ import annotations

import ctypes
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
#: readers' 1 MiB blocks, which reuse the heap's pages.
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3


def _map_large_buffers() -> None:
    """Let large buffers go back to the system when freed (see MMAP_THRESHOLD); glibc only."""
    try:
        if not ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
            log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    except (OSError, AttributeError):  # not glibc: its own allocator's ways
        pass


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
    _map_large_buffers()
    # The mount reaches S3 through this view only: no request of it can name another bucket.
    ops = S3Operations(Bucket(store, bucket), prefix, options, mountpoint=mountpoint, server_full=server_full)
    metrics = _metrics(store, ops, options.metrics) if options.metrics else None
    pending = ops.start()
    if pending:
        log.warning("%d staged files could not be uploaded yet: %s", len(pending), ", ".join(pending))
    where = bucket + (":/" + prefix if prefix else "")
    log.info("mounting %s at %s (libfuse %d)", where, mountpoint, LIBFUSE_MAJOR)
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
    if ops.writeback is not None:
        ops.writeback.stop()
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
