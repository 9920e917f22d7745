"""The filesystem: S3 objects as files, through fusepy.

Data flows one way: a FUSE call enters :mod:`.operations`, which decides its
errno and asks the :mod:`.namespace` (paths, directories, attribute cache),
:mod:`.mutations` (every change of names and metadata, with its cache
upkeep) and the :mod:`.staging` cache (local copies of file contents).
Operations sends no request itself; the units below it reach S3 (with
:mod:`.upload` and :mod:`.prefetch`) only through the mounted
:class:`~s3fs_mount.s3.bucket.Bucket`, so no request can name another bucket.
"""
