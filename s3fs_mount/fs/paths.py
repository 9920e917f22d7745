"""The one mapping between filesystem paths and S3 keys.

A mount of ``bucket:/prefix`` maps ``/a/b.txt`` to the key ``prefix/a/b.txt``.
A directory ``/a`` is the key prefix ``prefix/a/``; it exists when a marker
object ``prefix/a/`` exists, when any key starts with ``prefix/a/`` (an
implicit directory), or when an object ``prefix/a_$folder$`` exists (the
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
    """Paths <-> keys under one prefix.

    ::

        >>> km = KeyMap('photos/')
        >>> km.key('/2024/a.jpg'), km.dir_prefix('/2024'), km.path('photos/2024/a.jpg')
        ('photos/2024/a.jpg', 'photos/2024/', '/2024/a.jpg')
    """

    def __init__(self, prefix: str = "") -> None:
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""

    def key(self, path: str) -> str:
        """The object key of the file at ``path``."""
        return self.prefix + path.strip("/")

    def dir_prefix(self, path: str) -> str:
        """The key prefix of the directory at ``path`` (ends with '/', or '' for the root)."""
        rel = path.strip("/")
        return self.prefix + rel + "/" if rel else self.prefix

    def marker_key(self, path: str) -> str:
        """The key of the directory marker object of ``path``."""
        return self.dir_prefix(path)

    def folder_key(self, path: str) -> str:
        """The ``_$folder$`` object key of ``path`` (of the root: ``prefix_$folder$``, or ``_$folder$``)."""
        return self.key(path).rstrip("/") + FOLDER_SUFFIX

    def path(self, key: str) -> str:
        """The path of ``key`` (which must be under the prefix)."""
        return "/" + key[len(self.prefix) :].strip("/")

    @staticmethod
    def join(parent: str, name: str) -> str:
        return posixpath.join(parent, name)

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """``'/a/b'`` -> ``('/a', 'b')``."""
        parent, name = posixpath.split(path.rstrip("/") or "/")
        return parent or "/", name
