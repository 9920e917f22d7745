"""Running a mount: recover staged files, serve FUSE, upload everything at the end."""

from __future__ import annotations

import logging

from s3fs_mount.fs.fuselib import FUSE, LIBFUSE_MAJOR
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3.store import RemoteStore

log = logging.getLogger(__name__)


def serve(store: RemoteStore, bucket: str, prefix: str, mountpoint: str, options: MountOptions) -> int:
    """Mount ``bucket`` (under ``prefix``) at ``mountpoint`` in this process, until unmounted.

    SIGTERM and SIGINT unmount (libfuse's handlers). Every dirty file is
    uploaded before returning. Returns 0 when nothing is left unuploaded,
    else 1 (the files named in the log stay staged for the next mount).
    """
    ops = S3Operations(store, bucket, prefix, options, mountpoint=mountpoint)
    pending = ops.start()
    if pending:
        log.warning("%d staged files could not be uploaded yet: %s", len(pending), ", ".join(pending))
    where = bucket + (":/" + prefix if prefix else "")
    log.info("mounting %s at %s (libfuse %d)", where, mountpoint, LIBFUSE_MAJOR)
    try:
        FUSE(ops, mountpoint, **ops.fuse_options())
    except RuntimeError as exc:
        log.error("FUSE could not mount %s: %s", mountpoint, exc)
        return 1
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
