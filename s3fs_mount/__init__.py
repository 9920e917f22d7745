"""s3fs-mount: mount an S3 bucket as a directory.

Two public layers live here:

* the S3 connector (:mod:`s3fs_mount.s3`): ``S3Connection``, ``S3Name``,
  ``RemoteStore`` and ``RemoteStoreError``, re-exported at the top level::

      >>> from s3fs_mount import S3Connection, RemoteStore
      >>> store = RemoteStore(S3Connection(**config['s3']))

* the filesystem (:mod:`s3fs_mount.fs`), a fusepy ``Operations`` class over
  ``RemoteStore``, mounted by ``bin/s3fs-mount`` (:mod:`s3fs_mount.cli`).
"""

from s3fs_mount.s3 import (
    ObjectInfo,
    RemoteStore,
    RemoteStoreError,
    S3Connection,
    S3Error,
    S3Name,
)

__version__ = "0.1.0"

__all__ = [
    "ObjectInfo",
    "RemoteStore",
    "RemoteStoreError",
    "S3Connection",
    "S3Error",
    "S3Name",
    "__version__",
]
