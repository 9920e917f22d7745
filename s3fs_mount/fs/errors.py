"""The one mapping from failures to errnos.

404 -> ENOENT (ESTALE through an open handle; EIO when the bucket is gone), 403 -> EACCES,
412 -> EIO (changed under us), an upload that found another client's version (:class:`Conflict`)
-> ESTALE, transport failures and 5xx (retries spent) -> EIO. Every failure logs one line with
the operation, the path and S3's error code; an unexpected exception
becomes EIO and a traceback in the log, never a dead mount. The guard every
FUSE call runs in, which applies this mapping, is in :mod:`.fuselib`: this
module loads no libfuse, so that tools such as ``s3fs-mount status`` need none.
"""

from __future__ import annotations

import errno

from s3fs_mount.s3.errors import GaveUp, RemoteStoreError, S3Error


class FsError(OSError):
    """A filesystem-level refusal with its errno (ENOTEMPTY, EISDIR, ...)."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(err, why or errno.errorcode.get(err, str(err)))


class Corrupt(FsError):
    """Bytes S3 sent do not hash to what it stored: EIO, and they were not kept."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, why)


class Replaced(FsError):
    """S3 no longer holds the version a read was for: another client replaced the object
    since this mount looked it up (a 412 on the read's If-Match). EIO, unless the handle
    has served nothing yet: then it follows the new version (:meth:`S3Operations.read`); or
    the new version holds the same bytes (a metadata copy): then the reader goes on in it."""

    def __init__(self, key: str, etag: str) -> None:
        super().__init__(errno.EIO, "%s: version %s was replaced in S3 by another client" % (key, etag))
        self.key, self.etag = key, etag


class Removed(FsError):
    """S3 no longer holds the object a read was for: another client removed it since this mount
    looked it up (a 404 on the read's GET, within attr_ttl). ESTALE, as NFS says of a file
    removed under an open handle (read(2) never says ENOENT); the reader forgets the name, so
    that the next open or lookup asks S3 and says ENOENT."""

    def __init__(self, key: str) -> None:
        super().__init__(errno.ESTALE, "%s: removed from S3 by another client" % key)
        self.key = key


class Stale(FsError):
    """The kernel's entry for ``path`` is out of date: ESTALE, so that the kernel looks the path
    up again (once, with LOOKUP_REVAL: Linux's retry_estale) and goes on with what it holds now:
    an open with O_CREAT of a name another client removed creates it, a chmod of a name a
    directory shadows now goes to the directory. An answer, not trouble: logged at debug level."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.ESTALE, "%s: %s (the kernel looks the path up again)" % (path, why))


class Superseded(Stale):
    """A call by a name libfuse has given up (a .fuse_hidden name it unlinked)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "libfuse unlinked this name")


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


#: The FUSE calls made through an open handle. An object gone from S3 under one (another
#: client deleted it before its bytes were fetched) is ESTALE, as NFS says of a file removed
#: by another client: read(2) and write(2) never say ENOENT, and the file was open.
HANDLE_CALLS = frozenset({"read", "read_spans", "write", "flush", "fsync", "release"})


def errno_for(exc: BaseException, operation: str = "") -> int:
    """The errno that honestly describes ``exc``, met by the FUSE call ``operation``."""
    if isinstance(exc, GaveUp):  # not sent: another part of its upload failed, so
        exc = exc.cause
    if isinstance(exc, S3Error):
        if exc.status == 404 and exc.code == "NoSuchBucket":
            # Not ENOENT: no file is missing but all of them, and a readdir's ENOENT is the end
            # of the directory to glibc (ls showed an empty directory and said ok).
            return errno.EIO
        if exc.status == 404:
            return errno.ESTALE if operation in HANDLE_CALLS else errno.ENOENT
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
