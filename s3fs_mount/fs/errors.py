"""The one mapping from failures to errnos, and the guard every FUSE call runs in.

404 -> ENOENT, 403 -> EACCES, 412 -> EIO (changed under us), an upload
that found another client's version (:class:`Conflict`) -> ESTALE, transport
failures and 5xx (retries spent) -> EIO. Every failure logs one line with
the operation, the path and S3's error code; an unexpected exception
becomes EIO and a traceback in the log, never a dead mount.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.s3.errors import RemoteStoreError, S3Error

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class FsError(OSError):
    """A filesystem-level refusal with its errno (ENOTEMPTY, EISDIR, ...)."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(err, why or errno.errorcode.get(err, str(err)))


class Corrupt(FsError):
    """Bytes S3 sent do not hash to what it stored: EIO, and they were not kept."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, why)


class Conflict(FsError):
    """An upload found S3's object changed by another client since this mount saw it.

    Both versions are kept: theirs at ``key``, ours at ``saved_as``. The
    errno is ESTALE, as gcsfuse answers for an object clobbered underneath.
    """

    def __init__(self, key: str, saved_as: str, ours_base: str, theirs: str) -> None:
        super().__init__(
            errno.ESTALE,
            "%s changed in S3 (ETag %s -> %s): ours kept as %s"
            % (key, ours_base or "none", theirs or "none", saved_as),
        )
        self.key = key
        self.saved_as = saved_as
        self.ours_base = ours_base
        self.theirs = theirs


def errno_for(exc: BaseException) -> int:
    """The errno that honestly describes ``exc``."""
    if isinstance(exc, FuseOSError):
        return exc.errno
    if isinstance(exc, S3Error):
        if exc.status == 404:
            return errno.ENOENT
        if exc.status == 403:
            return errno.EACCES
        if exc.status == 400 and exc.code == "KeyTooLongError":
            return errno.ENAMETOOLONG
        if exc.status == 400 and exc.code in ("EntityTooLarge", "MetadataTooLarge"):
            return errno.EFBIG if exc.code == "EntityTooLarge" else errno.E2BIG
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, RemoteStoreError):
        return errno.EIO
    return errno.EIO


# Errnos that are answers, not trouble: logged at debug level only.
QUIET = frozenset({errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTSUP})


def fuse_operation(fn: F) -> F:
    """Run a FUSE method so that any failure becomes a FuseOSError and one log line."""

    @functools.wraps(fn)
    def guarded(self: Any, path: str, *args: Any) -> Any:
        try:
            return fn(self, path, *args)
        except Exception as exc:
            err = _fuse_error(fn.__name__, path, exc)
            if err is exc:
                raise
            raise err from exc

    return guarded  # type: ignore[return-value]


def fuse_entries(operation: str, path: str, entries: Iterator[T]) -> Iterator[T]:
    """``entries`` as a FUSE call hands them out bit by bit (a streamed ``readdir``): a failure
    on the way is a FuseOSError and one log line, as in :func:`fuse_operation`."""
    try:
        yield from entries
    except Exception as exc:
        err = _fuse_error(operation, path, exc)
        if err is exc:
            raise
        raise err from exc


def _fuse_error(operation: str, path: str, exc: Exception) -> FuseOSError:
    """The FuseOSError for ``exc``, logged once."""
    if isinstance(exc, FuseOSError):
        if exc.errno not in QUIET:
            log.info("%s %s: %s", operation, path, errno.errorcode.get(exc.errno, exc.errno))
        return exc
    err = errno_for(exc)
    if isinstance(exc, (RemoteStoreError, FsError, OSError)):
        level = logging.DEBUG if err in QUIET else logging.WARNING
        log.log(level, "%s %s: %s (%s)", operation, path, errno.errorcode.get(err, err), exc)
    else:
        log.exception("%s %s: unexpected error, returning EIO", operation, path)
    return FuseOSError(err)
