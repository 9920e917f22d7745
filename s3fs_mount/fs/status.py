"""The attribute on a mount's root that ``s3fs-mount status`` and ``sync`` read.

Its own module so that reading it (s3fs_mount.control) needs no libfuse.
"""

#: On the mount's root: the mount's status as JSON (S3Operations.status).
STATUS_XATTR = "s3.status"
