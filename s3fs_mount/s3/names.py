"""S3 object names: a key and (optionally) a bucket."""

from __future__ import annotations


class S3Name:
    """The name of an S3 object: a key, and a bucket or None.

    With no bucket the connection's ``default_bucket`` is used::

        >>> S3Name('reports/2024.csv', bucket='my_other_bucket')
        S3Name('reports/2024.csv', bucket='my_other_bucket')
    """

    __slots__ = ("key", "bucket")

    def __init__(self, key: str, bucket: str | None = None) -> None:
        if not isinstance(key, str):
            raise TypeError("S3Name key must be a str, not %s" % type(key).__name__)
        self.key = key
        self.bucket = bucket

    def __repr__(self) -> str:
        return "S3Name(%r, bucket=%r)" % (self.key, self.bucket)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Name) and (self.key, self.bucket) == (other.key, other.bucket)

    def __hash__(self) -> int:
        return hash((self.key, self.bucket))


RemoteName = str | S3Name


def resolve(name: RemoteName, default_bucket: str | None) -> tuple[str, str]:
    """Return ``(bucket, key)`` for a key string or an S3Name.

    Raises ValueError when neither the name nor the connection gives a bucket.
    """
    if isinstance(name, S3Name):
        bucket, key = name.bucket, name.key
    elif isinstance(name, str):
        bucket, key = None, name
    else:
        raise TypeError("remote name must be a str or an S3Name, not %s" % type(name).__name__)
    bucket = bucket or default_bucket
    if not bucket:
        raise ValueError("no bucket for %r: give S3Name(key, bucket=...) or a default_bucket" % key)
    return bucket, key
