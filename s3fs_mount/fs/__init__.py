"""The filesystem: S3 objects as files, through fusepy.

Data flows one way: a FUSE call enters :mod:`.operations`, which asks the
:mod:`.namespace` (paths, directories, attribute cache) and the
:mod:`.staging` cache (local copies of file contents); only those, with
:mod:`.upload` and :mod:`.prefetch`, talk to the connector, and only through
the mounted :class:`~s3fs_mount.s3.bucket.Bucket` (no request can name another
bucket).
"""
