"""Exceptions raised by the S3 connector."""

from __future__ import annotations


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
        return text

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


class ConfigError(RemoteStoreError, ValueError):
    """The connection settings are wrong; the message says which and why."""
