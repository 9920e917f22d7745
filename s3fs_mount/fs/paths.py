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

import logging
import posixpath

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"
NAME_MAX = 255
_warned: set[str] = set()


def is_valid_name(name: str) -> bool:
    """True if ``name`` can be one path segment: not empty, not . or .., no NUL or /, <= 255 bytes."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX
    )


def warn_skipped(key: str, why: str) -> None:
    """Log once per key that it is left out of a listing."""
    if key not in _warned:
        _warned.add(key)
        log.warning("object %r is not shown: %s", key, why)


class KeyMap:
    """Paths <-> the mount's keys (relative to the mounted prefix).

    ::

        >>> km = KeyMap()
        >>> km.key('/2024/a.jpg'), km.dir_prefix('/2024'), km.path('2024/a.jpg')
        ('2024/a.jpg', '2024/', '/2024/a.jpg')
    """

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
        """``'/a/b'`` -> ``('/a', 'b')``."""
        parent, name = posixpath.split(path.rstrip("/") or "/")
        return parent or "/", name
