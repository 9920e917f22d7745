"""The one mapping between filesystem paths and S3 keys.

Keys are the mount's own: relative to the mounted prefix, which the
:class:`~s3fs_mount.s3.bucket.Bucket` view holds (a mount of ``bucket:/prefix``
reaches S3 through ``Bucket(store, 'bucket', 'prefix/')``). ``/a/b.txt`` is the
key ``a/b.txt`` (``prefix/a/b.txt`` in S3). A directory ``/a`` is the key prefix
``a/``; it exists when a marker object ``a/`` exists, when any key starts with
``a/`` (an implicit directory), or when an object ``a_$folder$`` exists (the
convention of old s3fs and Hadoop).
"""

from __future__ import annotations

import errno
import logging
import posixpath

from s3fs_mount.fs.errors import FsError

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"
NAME_MAX = 255
_warned: set[str] = set()


def is_valid_name(name: str) -> bool:
    """True if ``name`` can be one path segment of a key: not empty, not . or .., no NUL or /,
    UTF-8 (libfuse hands other bytes over as surrogate escapes), <= 255 bytes."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name and size <= NAME_MAX


def warn_skipped(key: str, why: str) -> None:
    """Log once per key that it is left out of a listing."""
    if key not in _warned:
        _warned.add(key)
        log.warning("object %r is not shown: %s", key, why)


def unstorable(name: str, backslash_is_slash: bool = False) -> str | None:
    """Why a new file, directory or link may not be called ``name`` (None: it may).

    A key ending in ``_$folder$`` lists as a directory (the convention of old s3fs and
    Hadoop), so a file of that name would vanish, and show as a directory, once its listing
    comes from S3. Where the server stores ``\\`` in a key as ``/`` (SeaweedFS), ``a\\b``
    would be ``b`` in a directory ``a``. A key is UTF-8: a name of other bytes (which
    libfuse hands over with surrogate escapes) can never be uploaded.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "S3 keys are UTF-8 and this name is not"
    if name.endswith(FOLDER_SUFFIX):
        return "a name ending in %s marks a directory in S3: it would show as one" % FOLDER_SUFFIX
    if backslash_is_slash and "\\" in name:
        return "this server stores '\\' in a key as '/': it would show as another path"
    return None


class KeyMap:
    """Paths <-> the mount's keys (relative to the mounted prefix).

    ::

        >>> km = KeyMap()
        >>> km.key('/2024/a.jpg'), km.dir_prefix('/2024'), km.path('2024/a.jpg')
        ('2024/a.jpg', '2024/', '/2024/a.jpg')
    """

    def __init__(self) -> None:
        #: The server stores a '\\' in a key as '/'. Set once, at mount
        #: (:meth:`~s3fs_mount.fs.namespace.Namespace.configure_names`), before any FUSE call.
        self.backslash_is_slash = False

    def check_new(self, path: str) -> None:
        """Raise FsError(EINVAL), saying why, if a new file, directory or link may not be at
        ``path`` (see :func:`unstorable`)."""
        why = unstorable(self.split(path)[1], self.backslash_is_slash)
        if why:
            raise FsError(errno.EINVAL, why)

    def key(self, path: str) -> str:
        """The object key of the file at ``path``."""
        return path.strip("/")

    def dir_prefix(self, path: str) -> str:
        """The key prefix of the directory at ``path`` (ends with '/', or '' for the root)."""
        rel = path.strip("/")
        return rel + "/" if rel else ""

    def marker_key(self, path: str) -> str:
        """The key of the directory marker object of ``path`` ('' for the root: the prefix's own marker)."""
        return self.dir_prefix(path)

    def folder_key(self, path: str) -> str:
        """The ``_$folder$`` object key of ``path`` (of the root: ``_$folder$``)."""
        return self.key(path) + FOLDER_SUFFIX

    def path(self, key: str) -> str:
        """The path of ``key``."""
        return "/" + key.strip("/")

    @staticmethod
    def join(parent: str, name: str) -> str:
        """``('/a', 'b')`` -> ``'/a/b'``, as ``posixpath.join`` (by concatenation: a listing of a
        large directory joins two names per entry)."""
        if not parent or name.startswith("/"):
            return posixpath.join(parent, name)
        return parent + name if parent.endswith("/") else parent + "/" + name

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """``'/a/b'`` -> ``('/a', 'b')``, as ``posixpath.split`` of it without trailing slashes
        (by slicing: ~10 a small file written, each a third of posixpath's calls)."""
        path = path.rstrip("/") or "/"
        cut = path.rfind("/") + 1
        parent, name = path[:cut], path[cut:]
        if parent and parent != "/" * len(parent):
            parent = parent.rstrip("/")
        return parent or "/", name
