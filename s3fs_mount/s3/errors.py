"""Exceptions raised by the S3 connector.

Nothing else leaves it: a failure to reach S3 is a :class:`TransportError`
(which is also the ``requests`` exception it wraps, so code written against
the seed API's "connection exceptions" still catches it).
"""

from __future__ import annotations

import re

import requests
import urllib3


class RemoteStoreError(Exception):
    """Base class of every error the connector raises on purpose."""


class S3Error(RemoteStoreError):
    """S3 answered with an error status.

    Carries what S3 said, parsed from its XML error body when it sent one::

        >>> try:
        ...     store.head('missing')
        ... except S3Error as e:
        ...     e.status, e.code      # (404, 'NoSuchKey')
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str = "",
        resource: str = "",
    ) -> None:
        self.status = status
        self.code = code or _DEFAULT_CODES.get(status, "HTTP%d" % status)
        self.message = message
        self.request_id = request_id
        self.resource = resource
        super().__init__(str(self))

    def __str__(self) -> str:
        text = "%s %s" % (self.status, self.code)
        if self.message:
            text += ": %s" % self.message
        if self.resource:
            text += " (%s)" % self.resource
        if self.request_id:
            text += " [request id %s]" % self.request_id
        if self.hint:
            text += ": %s" % self.hint
        return text

    @property
    def hint(self) -> str:
        """What to do about a refusal AWS users meet (an expired token, KMS, a missing SSE-C key, a
        bucket deleted, keys S3 does not take), or ''."""
        message = self.message.lower()
        if self.code in ("ExpiredToken", "TokenRefreshRequired") or "token has expired" in message:
            return EXPIRED_TOKEN
        if self.code.startswith("KMS.") or (self.status == 403 and "kms:" in message):
            return KMS_REFUSED
        # SeaweedFS: "... must provide the customer key"; AWS: "The object was stored using a form of
        # Server Side Encryption. The correct parameters must be provided to retrieve the object."
        if self.status == 400 and ("customer provided key" in message or "stored using a form of" in message):
            return SSE_C_NEEDED
        if self.status == 400 and not self.message and self.resource.startswith("HEAD "):
            return HEAD_400
        if self.code == "NoSuchBucket":
            return BUCKET_GONE
        if self.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
            return KEYS_REFUSED
        return ""

    @property
    def not_found(self) -> bool:
        """True for a 404: no such key, or no such bucket."""
        return self.status == 404

    @property
    def access_denied(self) -> bool:
        """True for a 403: wrong credentials, signature or permissions."""
        return self.status == 403

    @property
    def precondition_failed(self) -> bool:
        """True when an If-Match (or copy-source-if-match) did not hold."""
        return self.status == 412

    @property
    def conditional_conflict(self) -> bool:
        """True for AWS's 409 to a conditional write while another write of the same key is under
        way (ConditionalRequestConflict; OperationAborted, "a conflicting conditional operation is
        in progress"): for one conditional on the key being free, the key is being taken."""
        return self.status == 409 and self.code in ("ConditionalRequestConflict", "OperationAborted")


EXPIRED_TOKEN = (
    "the session token has expired: get fresh credentials (aws sso login, a new AWS_SESSION_TOKEN), "
    "or let the mount take them from a source it renews (a profile's role, the instance or container)"
)
KMS_REFUSED = (
    "SSE-KMS refused: the mount's identity may not use the KMS key "
    "(writing needs kms:GenerateDataKey, reading kms:Decrypt)"
)
SSE_C_NEEDED = "the object is encrypted with a customer key (SSE-C): mount with -o sse_c_key_file=PATH"
HEAD_400 = (
    "a HEAD answer has no body to say why; an expired session token, or an SSE-C object asked "
    "for without its key, answer so"
)

KEYS_REFUSED = "S3 does not take these keys (changed or revoked since?): check the access key and secret"
BUCKET_GONE = "the bucket is gone (another client deleted it?): create it again to go on"


_DEFAULT_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NotFound",
    409: "Conflict",
    412: "PreconditionFailed",
    416: "InvalidRange",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class TransportError(RemoteStoreError, requests.RequestException):
    """No answer from S3: the connection failed, timed out, or broke mid-body.

    :attr:`reason` is the useful tail of what went wrong (``'Connection refused'``).
    """

    retryable = False
    #: Raised while S3 was already known to be unreachable (:class:`~s3fs_mount.s3.retry.Outage`),
    #: which has said so in the log once: callers log this failure quietly.
    in_outage = False

    def __init__(self, what: str, reason: str) -> None:
        super().__init__("%s: %s" % (what, reason))
        self.what, self.reason = what, reason

    @staticmethod
    def wrap(exc: BaseException, what: str) -> TransportError:
        """The connector's exception for a ``requests`` (or urllib3) failure ``exc`` of ``what``."""
        reason = _reason(exc)
        if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            return TLSFailed(what, reason)
        # Before the timeouts: urllib3's "could not connect" (refused, no such host) is a
        # ConnectTimeoutError too.
        if isinstance(exc, _NOT_CONNECTED):
            return ConnectionFailed(what, reason)
        if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
            return TimedOut(what, reason)
        if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.ProtocolError)):
            return ConnectionFailed(what, reason)
        return TransportError(what, reason)


#: urllib3's failures to reach the server or keep talking to it (requests calls them ConnectionError).
_NOT_CONNECTED = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.ClosedPoolError,
)


class TLSFailed(TransportError, requests.exceptions.SSLError):
    """The TLS handshake failed (a certificate, or http spoken to https)."""


class TimedOut(TransportError, requests.Timeout):
    """S3 did not answer in time. Retried."""

    retryable = True


class ConnectionFailed(TransportError, requests.ConnectionError):
    """The connection could not be made, or broke. Retried."""

    retryable = True


class Unreachable(ConnectionFailed):
    """Not sent: S3 was found unreachable moments ago, and another request is the one that
    probes it now (:class:`~s3fs_mount.s3.retry.Outage`)."""

    in_outage = True

    def __init__(self, what: str, cause: str, reason: str) -> None:
        """``cause``: the failure that found S3 unreachable; ``reason``: its :attr:`reason`."""
        super().__init__(what, "not sent, S3 is unreachable (%s)" % cause)
        self.reason = reason


class BodyBroken(ConnectionFailed):
    """An answer began, then its body broke off (a reset, a timeout mid-body). Retried: the
    request is sent again (the connection's own retries end once the answer's head is in)."""


def _reason(exc: BaseException) -> str:
    """The useful tail of a requests exception, e.g. 'Connection refused'."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    for known in ("certificate verify failed", "wrong version number", "Read timed out", "timed out"):
        if known in text:
            return known
    return exc.__class__.__name__


class GaveUp(RemoteStoreError):
    """A request not sent (or not sent again) because the job it belongs to failed already:
    another part of the same multipart upload failed for good (see
    :class:`~s3fs_mount.s3.retry.GiveUp`). :attr:`cause` is that failure."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__("%s not sent: %s" % (what, cause))
        self.what, self.cause = what, cause


class ConfigError(RemoteStoreError, ValueError):
    """The connection settings are wrong; the message says which and why."""
