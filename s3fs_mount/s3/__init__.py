"""The S3 connector: signing, HTTP, retries, XML, and the RemoteStore API.

It knows nothing of the filesystem; ``s3fs_mount.fs`` builds on it.
"""

from s3fs_mount.s3.bucket import Bucket, ObjectStore
from s3fs_mount.s3.checksums import ChecksumMismatch
from s3fs_mount.s3.connection import S3Connection
from s3fs_mount.s3.errors import ConfigError, RemoteStoreError, S3Error, TransportError
from s3fs_mount.s3.names import S3Name
from s3fs_mount.s3.retry import RetryPolicy
from s3fs_mount.s3.store import META_PREFIX, MultipartUpload, ObjectInfo, RemoteStore, metadata_of

__all__ = [
    "META_PREFIX",
    "Bucket",
    "ChecksumMismatch",
    "ConfigError",
    "MultipartUpload",
    "ObjectStore",
    "ObjectInfo",
    "RemoteStore",
    "RemoteStoreError",
    "RetryPolicy",
    "S3Connection",
    "S3Error",
    "S3Name",
    "TransportError",
    "metadata_of",
]
