"""How the objects the mount writes are stored: storage class, encryption, ACL, requester pays.

One :class:`ObjectOptions`, checked once by :meth:`ObjectOptions.parse` (the ``s3:`` settings
and ``-o`` options of the same names), gives the headers each kind of request needs
(:meth:`ObjectOptions.headers`). :class:`~s3fs_mount.s3.connection.S3Connection` adds them to
every request it sends, so no write, part, copy or read can go without them::

    >>> options = ObjectOptions.parse(storage_class="STANDARD_IA", sse="aws:kms:alias/data")
    >>> options.headers(operation_of("PUT", "key", {}, {}))
    {'x-amz-storage-class': 'STANDARD_IA', 'x-amz-server-side-encryption': 'aws:kms',
     'x-amz-server-side-encryption-aws-kms-key-id': 'alias/data'}

An SSE-C key (``sse_c_key_file``) is never logged nor shown: only its MD5 travels in clear.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from s3fs_mount.s3.errors import ConfigError

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "EXPRESS_ONEZONE",
    "OUTPOSTS",
    "SNOW",
)
#: Storage classes whose objects cannot be read back without a restore first.
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
#: The canned ACLs an object may be given (``x-amz-acl``).
CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
KMS = "aws:kms"
SSE_C = "x-amz-server-side-encryption-customer-"
COPY_SOURCE_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"

#: The operations :func:`operation_of` tells apart. Writes take every option; reads, parts and
#: the completion only the SSE-C key; any request the requester-pays header (RenameObject no
#: more: it moves the object as it is).
WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"})
KEYED = frozenset({"GetObject", "HeadObject", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload"})
COPIES = frozenset({"CopyObject", "UploadPartCopy"})
#: Operations AWS may answer with 200 and an ``<Error>`` body (the failure came after the status).
ERRORS_IN_BODY = frozenset({"CopyObject", "UploadPartCopy", "CompleteMultipartUpload"})


def operation_of(method: str, key: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """The S3 operation a request is: ``'PutObject'``, ``'UploadPartCopy'``, ``'GetObject'``, ...

    Requests without a key (listings, bucket requests, DeleteObjects) are ``'Bucket'``.
    """
    if not key:
        return "Bucket"
    if method in ("GET", "HEAD"):
        return "GetObject" if method == "GET" else "HeadObject"
    copy = any(name.lower() == "x-amz-copy-source" for name in headers)
    if method == "PUT":
        if "renameObject" in query:
            return "RenameObject"
        if "partNumber" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


@dataclass(frozen=True)
class CustomerKey:
    """A 256-bit SSE-C key. Its bytes never appear in a repr, a log line or a message."""

    key: bytes = field(repr=False)
    #: Where it was read from (shown instead of the key).
    source: str = ""

    def headers(self, prefix: str = SSE_C) -> dict[str, str]:
        """The three headers of an SSE-C request (``prefix``: the copy source's for a copy)."""
        return {
            prefix + "algorithm": "AES256",
            prefix + "key": base64.b64encode(self.key).decode(),
            prefix + "key-md5": base64.b64encode(hashlib.md5(self.key).digest()).decode(),
        }

    @classmethod
    def read(cls, path: str) -> CustomerKey:
        """The key in file ``path``: 32 bytes, or their base64 (44 characters) or hex (64).

        :raises ConfigError: one line naming the file (never its content).
        """
        what = "sse_c_key_file %s" % path
        try:
            with open(os.path.expanduser(path), "rb") as fi:
                data = fi.read(4096)
                mode = stat.S_IMODE(os.fstat(fi.fileno()).st_mode)
        except OSError as exc:
            raise ConfigError("%s: %s" % (what, exc.strerror or exc)) from None
        key = _decode_key(data)
        if key is None:
            raise ConfigError(
                "%s: not a 256-bit key (expected 32 bytes, or their base64 or hex on one line)" % what
            )
        if mode & 0o077:
            log.warning("%s is readable by group/others (mode %03o): run chmod 600 %s", what, mode, path)
        return cls(key, path)


def _decode_key(data: bytes) -> bytes | None:
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return decoded if len(decoded) == 32 else None


@dataclass(frozen=True)
class ObjectOptions:
    """What every object the mount writes is stored with. The default asks nothing of S3."""

    storage_class: str = ""
    sse: str = ""  #: '', 'AES256' or 'aws:kms'
    kms_key_id: str = ""
    customer_key: CustomerKey | None = None
    requester_pays: bool = False
    acl: str = ""

    @classmethod
    def parse(
        cls,
        storage_class: str | None = None,
        sse: str | None = None,
        sse_c_key_file: str | None = None,
        requester_pays: bool | None = None,
        acl: str | None = None,
    ) -> ObjectOptions:
        """Check the settings (the one place they are checked) and read the SSE-C key file.

        :raises ConfigError: one line naming the setting and what it takes.
        """
        storage_class = (storage_class or "").strip()
        if storage_class and storage_class not in STORAGE_CLASSES:
            known = ", ".join(STORAGE_CLASSES)
            raise ConfigError("storage_class=%s: not a storage class (one of %s)" % (storage_class, known))
        if storage_class in ARCHIVE_CLASSES:
            log.warning(
                "storage_class=%s: what the mount writes cannot be read back until it is restored",
                storage_class,
            )
        sse = (sse or "").strip()
        kms_key_id = ""
        if sse.startswith(KMS + ":"):
            sse, kms_key_id = KMS, sse[len(KMS) + 1 :]
            if not kms_key_id:
                raise ConfigError("sse=aws:kms: with a colon, a KMS key id must follow (aws:kms:KEYID)")
        if sse and sse not in ("AES256", KMS):
            raise ConfigError("sse=%s: expected AES256, aws:kms or aws:kms:KEYID" % sse)
        acl = (acl or "").strip()
        if acl and acl not in CANNED_ACLS:
            raise ConfigError("acl=%s: not a canned ACL (one of %s)" % (acl, ", ".join(CANNED_ACLS)))
        if requester_pays is not None and not isinstance(requester_pays, bool):
            raise ConfigError("requester_pays must be true or false, not %r" % (requester_pays,))
        customer_key = CustomerKey.read(sse_c_key_file) if sse_c_key_file else None
        if customer_key is not None and sse:
            raise ConfigError("sse=%s and sse_c_key_file: an object has one encryption, not both" % sse)
        return cls(storage_class, sse, kms_key_id, customer_key, bool(requester_pays), acl)

    @property
    def etags_are_md5(self) -> bool:
        """False when S3 gives what this mount writes an ETag that is no MD5 (SSE-KMS, SSE-C)."""
        return self.sse != KMS and self.customer_key is None

    @property
    def given_by_writes(self) -> bool:
        """Every object this mount writes is given something (class, encryption, ACL): a copy
        gives it that, a RenameObject (the object moved as it is) would not."""
        return bool(self.storage_class or self.sse or self.customer_key is not None or self.acl)

    def headers(self, operation: str) -> dict[str, str]:
        """The headers a request of ``operation`` (see :func:`operation_of`) must carry."""
        out: dict[str, str] = {}
        if operation in WRITES:
            if self.storage_class:
                out["x-amz-storage-class"] = self.storage_class
            if self.sse:
                out["x-amz-server-side-encryption"] = self.sse
            if self.kms_key_id:
                out["x-amz-server-side-encryption-aws-kms-key-id"] = self.kms_key_id
            if self.acl:
                out["x-amz-acl"] = self.acl
        if self.customer_key is not None:
            if operation in WRITES or operation in KEYED:
                out.update(self.customer_key.headers())
            if operation in COPIES:
                out.update(self.customer_key.headers(COPY_SOURCE_SSE_C))
        if self.requester_pays:
            out["x-amz-request-payer"] = "requester"
        return out

    def describe(self) -> str:
        """``'storage class STANDARD_IA, SSE-KMS (key alias/x)'``: for logs (never the SSE-C key)."""
        said = []
        if self.storage_class:
            said.append("storage class %s" % self.storage_class)
        if self.sse == "AES256":
            said.append("SSE-S3")
        elif self.sse:
            said.append("SSE-KMS" + (" (key %s)" % self.kms_key_id if self.kms_key_id else ""))
        if self.customer_key is not None:
            said.append("SSE-C (key from %s)" % self.customer_key.source)
        if self.acl:
            said.append("ACL %s" % self.acl)
        if self.requester_pays:
            said.append("requester pays")
        return ", ".join(said)
