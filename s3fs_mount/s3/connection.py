"""The HTTP side of the connector: endpoint, credentials, signing, retries.

``S3Connection`` owns everything about *how* a request travels; the
``RemoteStore`` in :mod:`s3fs_mount.s3.store` says *what* to ask.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import urllib3

from s3fs_mount.s3 import xmlparse
from s3fs_mount.s3.errors import ConfigError, ConnectionFailed, S3Error, TLSFailed, TransportError
from s3fs_mount.s3.keepalive import FileSpan, Headers, KeptAlivePool
from s3fs_mount.s3.objectopts import ERRORS_IN_BODY, ObjectOptions, operation_of
from s3fs_mount.s3.pipelined import Pending, Pipeline
from s3fs_mount.s3.retry import GiveUp, RetryPolicy, ahead_of_need, is_retryable
from s3fs_mount.s3.sigv4 import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    SigV4Signer,
    canonical_query,
    is_signed,
    uri_encode,
)
from s3fs_mount.s3.transport import Response, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")
#: One line per request at DEBUG: method, bucket/key, status, ms, bytes.
request_log = logging.getLogger("s3fs_mount.requests")

Body = None | bytes | FileSpan | Callable[[], Any]
#: (access key id, secret, session token, expiry as epoch seconds or None)
Credentials = tuple[str, str, "str | None", "float | None"]
REFRESH_MARGIN = 300.0
#: An AWS S3 endpoint that names its region: s3.REGION, s3-REGION, s3.dualstack.REGION, s3-fips.REGION,
#: s3-fips.dualstack.REGION (virtual-hosted: BUCKET. before it), amazonaws.com or amazonaws.com.cn.
_AWS_REGIONAL = re.compile(
    r"(?:^|\.)s3(?:-fips)?(?:\.dualstack)?[.-](?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$"
)


def region_of(endpoint: str) -> str | None:
    """The region an AWS endpoint's name gives (``s3-us-west-2.amazonaws.com``: ``us-west-2``), or None.

    ``s3.amazonaws.com`` and ``s3-external-1.amazonaws.com`` are us-east-1's.
    """
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].lower()
    if host in ("s3.amazonaws.com", "s3-external-1.amazonaws.com"):
        return "us-east-1"
    found = _AWS_REGIONAL.search(host)
    return found.group("region") if found else None


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def is_aws_endpoint(endpoint: str) -> bool:
    """Is ``endpoint`` (``host`` or ``host:port``) AWS S3's (``*.amazonaws.com``, ``.com.cn``)?"""
    host = endpoint.rsplit(":", 1)[0].lower() if endpoint.count(":") == 1 else endpoint.lower()
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def virtual_hostable(bucket: str) -> bool:
    """May ``bucket`` be addressed as ``BUCKET.endpoint``, as the AWS SDKs (botocore) decide?

    Only a DNS-compatible name with no dots: 3-63 characters of lower-case letters, digits and
    inner hyphens. A name with dots would not match AWS's TLS certificate (``*.s3...`` covers
    one label), and botocore sends it path-style over plain http too.
    """
    return 3 <= len(bucket) <= 63 and _LABEL.match(bucket) is not None


#: Methods that change the bucket (uploads, copies, deletes): sent even while S3 is unreachable,
#: once, where lookups fail unsent (retry.Outage).
CHANGES = frozenset({"PUT", "POST", "DELETE"})
#: Answers that say something about the object, not that the request failed: a lookup's 404,
#: a condition that did not hold (412), "not modified" (304).
EXPECTED_MISSES = frozenset({304, 404, 412})


class RequestObserver(Protocol):
    """What :class:`RequestStats` tells of each attempt, besides counting it."""

    def request(self, method: str, status: int | None, up: int, down: int, seconds: float) -> None: ...

    def retry(self) -> None: ...


#: An HTTP header name (RFC 9110's token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise ValueError, naming the header and why, for one that cannot be sent as it is.

    A CR, LF or NUL would end the header. A value goes out in Latin-1; a signed header's
    (``x-amz-*``: metadata) must be ASCII, else it is signed otherwise than sent and S3 answers
    403 SignatureDoesNotMatch, as to a wrong secret. (An unsigned one, such as a
    Content-Disposition S3 handed us in Latin-1, goes back as it came.)
    """
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValueError("header %r: not a header name (letters, digits and !#$%%&'*+-.^_`|~)" % name)
        if "\r" in value or "\n" in value or "\0" in value:
            why = "a CR, LF or NUL cannot be in a header"
        elif not value.isascii() and (is_signed(name.lower()) or max(value) > "\xff"):
            why = "not ASCII: S3 takes ASCII header values (encode others, e.g. =?UTF-8?B?<base64>?=)"
        else:
            continue
        raise ValueError("header %s: %r: %s" % (name, value, why))


class RequestStats:
    """Counters for ``status`` and the summary at unmount. Every field guarded by ``_lock``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.failures = 0  #: transport errors, and answers that are errors (5xx, 403, 400, ...)
        self.misses = 0  #: 404, 412, 304: ordinary answers (see EXPECTED_MISSES)
        self.retries = 0  #: attempts after the first, by the retry policy
        #: tries sent by the request pipeline (S3Connection.send_ahead: one thread, many sockets)
        self.pipelined = 0
        #: Told of every attempt too (``request(method, status, up, down, seconds)``, ``retry()``):
        #: s3fs_mount.metrics.Metrics, say. Set once, before requests are sent.
        self.observer: RequestObserver | None = None

    def add(
        self, method: str, up: int, down: int, status: int | None, ok: bool, seconds: float = 0.0
    ) -> None:
        """One attempt: ``status`` None for a transport error; ``ok`` if it was the expected answer."""
        if self.observer is not None:
            self.observer.request(method, status, up, down, seconds)
        with self._lock:
            self.requests[method] = self.requests.get(method, 0) + 1
            self.bytes_up += up
            self.bytes_down += down
            if not ok:
                if status in EXPECTED_MISSES:
                    self.misses += 1
                else:
                    self.failures += 1

    def retried(self) -> None:
        if self.observer is not None:
            self.observer.retry()
        with self._lock:
            self.retries += 1

    def sent_pipelined(self) -> None:
        """One try more sent by the request pipeline (counted by :meth:`add` too, when it ends)."""
        with self._lock:
            self.pipelined += 1

    def summary(self) -> str:
        with self._lock:
            total = sum(self.requests.values())
            kinds = ", ".join("%s %d" % kv for kv in sorted(self.requests.items()))
            line = "%d requests (%s), %d bytes up, %d bytes down, %d failed, %d retried, %d not found" % (
                total,
                kinds or "none",
                self.bytes_up,
                self.bytes_down,
                self.failures,
                self.retries,
                self.misses,
            )
            return line + (", %d sent ahead by one thread" % self.pipelined if self.pipelined else "")


#: Requests sent ahead of need at once by the request pipeline (:meth:`S3Connection.send_ahead`):
#: as many as the stat-ahead sends (fs/statahead.py WORKERS; s3fs-fuse's ``multireq_max``).
AHEAD_SOCKETS = 20


class _Request:
    """One request of :meth:`S3Connection.request`, to be sent (each attempt signed afresh): its
    tries counted and logged, an error answer made the exception it is.

    Holds no reference to a function that refers to it: a closure in a cycle keeps ``body`` (a
    part of up to 5 GiB) alive until the garbage collector runs, which big allocations do not
    prompt (a 1 GiB write held 27 parts of 8 MiB, 600 MiB of RSS). Used by one thread at a time.
    """

    __slots__ = (
        "conn", "method", "bucket", "key", "query", "qs", "headers", "body", "payload_hash",
        "expect", "stream", "read_timeout", "what", "operation", "attempts",
    )  # fmt: skip

    def __init__(
        self,
        conn: S3Connection,
        method: str,
        bucket: str | None,
        key: str,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        body: Body,
        payload_hash: str | None,
        expect: Iterable[int],
        stream: bool,
        read_timeout: float | None,
    ) -> None:
        self.conn = conn
        self.method = method
        self.bucket = bucket
        self.key = key
        self.query = dict(query or {})
        self.qs = canonical_query(self.query) if self.query else ""
        if payload_hash is None:
            if body is None:
                payload_hash = EMPTY_SHA256
            elif isinstance(body, (bytes, bytearray, memoryview)):
                payload_hash = hashlib.sha256(body).hexdigest()
            else:
                payload_hash = UNSIGNED_PAYLOAD
        self.payload_hash = payload_hash
        self.body = body
        self.expect = tuple(expect)
        self.stream = stream
        self.read_timeout = read_timeout
        self.what = "%s %s/%s" % (method, bucket or "", key)
        self.operation = operation_of(method, key, self.query, headers or {})
        self.headers = conn._with_object_options(self.operation, headers or {})
        check_headers(self.headers)
        self.attempts = 0

    def signed(self) -> tuple[str, dict[str, str]]:
        """This attempt's URL and signed headers (counted: a retry after the first)."""
        conn = self.conn
        self.attempts += 1
        if self.attempts > 1:
            conn.stats.retried()
        region = conn.region_for(self.bucket)
        host, path = conn._host_and_path(self.bucket, self.key, region)
        url = "%s://%s%s%s" % (conn.scheme, host, path, "?" + self.qs if self.qs else "")
        signer = conn._fresh_signer()
        if region != signer.region:
            signer = signer.for_region(region)
        return url, signer.sign(self.method, host, path, self.query, self.headers, self.payload_hash)

    def send(self) -> Response:
        """One try, through the transport (blocking); raises what :meth:`received` and
        :meth:`failed` make of its outcome."""
        url, signed = self.signed()
        body = self.body
        data = body() if callable(body) else body
        started = time.monotonic()
        sent = len(data) if isinstance(data, (bytes, bytearray, memoryview, FileSpan)) else 0
        try:
            resp = self.conn._send(self.method, url, signed, data, self.stream, self.read_timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise self.failed(exc, sent, started) from exc
        finally:
            if hasattr(data, "close"):
                data.close()
        return self.received(resp, signed, sent, started)

    def failed(self, exc: urllib3.exceptions.HTTPError, sent: int, started: float) -> TransportError:
        """A try that got no answer (``exc``): counted, and the connector's exception for it."""
        conn = self.conn
        conn.stats.add(self.method, sent, 0, None, False, time.monotonic() - started)
        request_log.debug("%s -> %s", self.what, exc.__class__.__name__)
        failure = TransportError.wrap(exc, self.what)
        if isinstance(failure, (ConnectionFailed, TLSFailed)) or isinstance(
            exc, urllib3.exceptions.ConnectTimeoutError
        ):
            # The server may have restarted: every pooled connection is as dead as this
            # one, and retrying through them would spend all attempts at once.
            conn._transport.clear()
        return failure

    def received(self, resp: Response, signed: Mapping[str, str], sent: int, started: float) -> Response:
        """A try's answer, counted and logged; raises a 200 whose body is an ``<Error>``."""
        method = self.method
        if not sent and "Content-Length" in signed:
            sent = int(signed["Content-Length"])
        got = int(resp.headers.get("Content-Length") or 0) if method != "HEAD" else 0
        ok = resp.status_code in self.expect
        failed = (
            self.conn._error_in_body(resp, self.what, self.stream)
            if ok and self.operation in ERRORS_IN_BODY
            else None
        )
        ok = ok and failed is None
        seconds = time.monotonic() - started
        self.conn.stats.add(method, sent, got, resp.status_code, ok, seconds)
        if request_log.isEnabledFor(logging.DEBUG):
            request_log.debug(
                "%s %s %s %d %.0fms up=%d down=%d",
                method,
                self.bucket or "",
                self.key,
                resp.status_code,
                seconds * 1000,
                sent,
                got,
            )
        if failed is not None:
            raise failed  # a 200 whose body is an <Error>: retried as a 500
        return resp

    def outcome(self, resp: Response) -> Response | None:
        """An answer as an attempt ends with it: itself if expected, None if S3 named the
        bucket's region (send again, signed for it), else raises its S3Error."""
        if resp.status_code in self.expect:
            return resp
        # Once: the region is now known, and the same answer again is no news.
        if not self.conn._learn_region(self.bucket, resp):
            raise self.conn._error(resp, self.what)
        return None

    def attempt(self) -> Response:
        """One attempt of the retry policy: tries until an answer is expected or an error."""
        while True:
            resp = self.outcome(self.send())
            if resp is not None:
                return resp


class _SentAhead(Pending[Any]):
    """A request of :meth:`S3Connection.send_ahead`, as the pipeline sends it (its
    :class:`~s3fs_mount.s3.pipelined.Exchange`) and its caller waits for it (a Pending).

    Signed by the thread that sends it ahead, and its answer read into ``then``'s value by the
    one that takes it (:meth:`result`): the pipeline's one thread does the rest (the wire, the
    counting, the retry policy's first word), so that it is not the walk's bottleneck where the
    machine's CPU is shared by many (one thread, one share).
    """

    __slots__ = ("_request", "_then", "_signed", "_started_at", "_prepared")

    def __init__(self, request: _Request, then: Callable[[Response], Any]) -> None:
        super().__init__()
        self._request = request
        self._then = then
        self._signed: dict[str, str] = {}
        self._started_at = 0.0
        self._prepared: tuple[str, int, bytes] | BaseException
        try:
            url, self._signed = request.signed()
            host, port, target = request.conn._transport.address(url)
            data = KeptAlivePool.request_head(request.method, target, self._signed, None)
            self._prepared = host, port, data
        except Exception as exc:  # noqa: BLE001 - the waiter's, as request() would raise it
            self._prepared = exc

    def result(self) -> Any:
        """``then`` of the answer (raises what :meth:`S3Connection.request` would)."""
        return self._then(super().result())

    def begin(self) -> tuple[str, int, bytes] | None:
        """See :class:`~s3fs_mount.s3.pipelined.Exchange` (the pipeline's thread is sending ahead)."""
        if not self.start():
            return None  # cancelled
        request = self._request
        try:
            request.conn.retry.outage.may_probe(request.what)  # S3 unreachable: Unreachable, unsent
        except Exception as exc:  # noqa: BLE001 - the waiter's, as request() would raise it
            self.settle(error=exc)
            return None
        prepared = self._prepared
        if isinstance(prepared, BaseException):
            self.settle(error=prepared)
            return None
        self._started_at = time.monotonic()
        request.conn.stats.sent_pipelined()
        return prepared

    def answered(self, status: int, headers: Headers) -> None:
        request = self._request
        try:
            answer = Response(status, headers, request.method, b"")
            first: Response | BaseException | None = request.outcome(
                request.received(answer, self._signed, 0, self._started_at)
            )
        except Exception as exc:  # noqa: BLE001 - the attempt's failure, for the retry policy
            first = exc
        self._end(first)

    def failed(self, exc: urllib3.exceptions.HTTPError) -> None:
        self._end(self._request.failed(exc, 0, self._started_at))

    def _end(self, first: Response | BaseException | None) -> None:
        """The first try's outcome (None: send again, signed for the region S3 named) through the
        retry policy, as :meth:`S3Connection.request`'s: here if it will not be tried again, else
        in a thread of its own (its pauses and blocking tries would hold the pipeline)."""
        request = self._request
        again = first is None or (isinstance(first, Exception) and is_retryable(first))
        attempts = _Attempts(request, first)
        if again:
            request.conn.retry_ahead(functools.partial(self._finish, attempts))
        else:
            self._finish(attempts)

    def _finish(self, attempts: _Attempts) -> None:
        request = self._request
        try:
            answer = request.conn.retry.call(attempts.next, request.what)
        except Exception as exc:  # noqa: BLE001 - the waiter's
            self.settle(error=exc)
        else:
            self.settle(answer)


class _Attempts:
    """The retry policy's attempts of a request sent ahead: the first is the pipeline's outcome,
    each later one is sent here (blocking)."""

    __slots__ = ("_request", "_first", "_used")

    def __init__(self, request: _Request, first: Response | BaseException | None) -> None:
        self._request = request
        self._first = first
        self._used = False

    def next(self) -> Response:
        if not self._used:
            self._used = True
            first, self._first = self._first, None
            if isinstance(first, BaseException):
                raise first
            if first is not None:
                return first
        return self._request.attempt()


def _ahead_of_need(call: Callable[[], None]) -> None:
    with ahead_of_need():
        call()


class S3Connection:
    """Where and how to reach S3: endpoint, credentials, default bucket.

    Takes the keys of the ``s3:`` section of an ``s3.yaml``::

        >>> with open('s3.yaml') as fi:
        ...     config = yaml.safe_load(fi)
        >>> connection = S3Connection(**config['s3'])

    :param access_key_id: the access key (the "user name").
    :param secret_access_key: the secret key (the "password"); never logged.
    :param default_bucket: bucket used when a name gives none.
    :param endpoint: ``host`` or ``host:port`` (a ``http://``/``https://``
        prefix is accepted and sets ``tls``).
    :param tls: use https (default True).
    :param region: signing region (default: the one an AWS endpoint's name gives,
        ``s3-us-west-2.amazonaws.com`` signs for ``us-west-2``, else ``us-east-1``).
    :param path_style: ``https://host/bucket/key`` addressing; default True
        for non-AWS endpoints, virtual-hosted (``https://bucket.host/key``) for
        ``*.amazonaws.com``. Either way a bucket name that cannot be a host name, or
        has dots (AWS's TLS certificate covers one label), is addressed path-style, as botocore does.
    :param session_token: temporary credentials' token, if any.
    :param verify_tls: check the server certificate (default True).
    :param timeout: seconds to connect and between bytes read (default 30).
    :param max_connections: size of the connection pool all threads share (default 32).
    :param storage_class: the storage class of every object written (``STANDARD_IA``, ...).
    :param sse: server-side encryption of every object written: ``AES256`` (SSE-S3),
        ``aws:kms`` or ``aws:kms:KEYID`` (SSE-KMS).
    :param sse_c_key_file: a file holding an SSE-C key: every object is written with it, and every
        read, copy and part of one carries it. Never logged.
    :param requester_pays: every request carries ``x-amz-request-payer: requester``.
    :param acl: the canned ACL of every object written (``bucket-owner-full-control``, ...).
    """

    def __init__(
        self,
        access_key_id: str = "",
        secret_access_key: str = "",
        default_bucket: str | None = None,
        endpoint: str = "s3.amazonaws.com",
        tls: bool = True,
        region: str | None = None,
        path_style: bool | None = None,
        session_token: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        credentials_expire: float | None = None,
        credential_refresh: Callable[[], Credentials] | None = None,
        storage_class: str | None = None,
        sse: str | None = None,
        sse_c_key_file: str | None = None,
        requester_pays: bool | None = None,
        acl: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                "unknown S3 setting%s: %s (known: %s)"
                % ("s" if len(unknown) > 1 else "", ", ".join(sorted(unknown)), ", ".join(KNOWN_SETTINGS))
            )
        for name, value in (
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
            ("endpoint", endpoint),
        ):
            if not isinstance(value, str):
                raise ConfigError("S3 setting %s must be a string" % name)
        if default_bucket is not None and not isinstance(default_bucket, str):
            raise ConfigError("S3 setting default_bucket must be a string")
        if not isinstance(tls, bool):
            raise ConfigError("S3 setting tls must be true or false, not %r" % (tls,))
        if endpoint.startswith(("http://", "https://")):
            tls = endpoint.startswith("https://")
            endpoint = endpoint.split("://", 1)[1]
        endpoint = endpoint.rstrip("/")
        if not endpoint or "/" in endpoint:
            raise ConfigError("S3 setting endpoint must be host or host:port, not %r" % endpoint)
        self.access_key_id = access_key_id
        self.default_bucket = default_bucket or None
        self.endpoint = endpoint
        self.tls = tls
        if region is not None and not isinstance(region, str):
            raise ConfigError("S3 setting region must be a string")
        #: The region the endpoint's name gives (an AWS regional endpoint), else None.
        self._endpoint_region = region_of(endpoint)
        self.region = region or self._endpoint_region or "us-east-1"
        self.path_style = (not is_aws_endpoint(endpoint)) if path_style is None else path_style
        self.verify_tls = verify_tls
        if not verify_tls:
            log.warning("TLS certificate verification is OFF for %s", endpoint)
        self.timeout = timeout
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        #: What every request adds for the objects written (storage class, encryption, ...).
        self.object_options = ObjectOptions.parse(storage_class, sse, sse_c_key_file, requester_pays, acl)
        self.stats = RequestStats()
        self.signer = SigV4Signer(access_key_id, secret_access_key, self.region, session_token=session_token)
        #: Temporary credentials: when they expire (epoch seconds), and how to get new ones.
        #: ``credentials_expire``, ``access_key_id`` and ``signer`` are written under _refresh_lock
        #: (or before requests are sent) and read without it: a reader gets the old signer or the
        #: new one, each whole. Every other field is immutable after __init__.
        self.credentials_expire = credentials_expire
        self.credential_refresh = credential_refresh
        self._refresh_lock = threading.Lock()
        #: bucket -> the region S3 said it is in, where that is not ``region``. GUARDED_BY(_region_lock).
        self._bucket_regions: dict[str, str] = {}
        self._region_lock = threading.Lock()
        # The environment's proxy and CA-bundle settings, read once, not per request. Plain
        # http needs no CA bundle (requests would stat its path for every request).
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.verify: bool | str = (bundle or True) if verify_tls and tls else False
        #: Sends the signed requests: urllib3's pools, as requests builds them (transport.py).
        self._transport = Transport(self.scheme, endpoint, self.verify, timeout, max_connections)
        #: The request pipeline (send_ahead), made at its first use. Written under _ahead_lock
        #: (read without it: None or made, whole).
        self._ahead: Pipeline | None = None
        self._ahead_lock = threading.Lock()
        self.proxies: dict[str, str] = self._transport.proxies

    def __repr__(self) -> str:
        return "S3Connection(endpoint=%r, default_bucket=%r, access_key_id=%r)" % (
            self.endpoint,
            self.default_bucket,
            self.access_key_id,
        )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def _fresh_signer(self) -> SigV4Signer:
        """The signer, after fetching new credentials when they expire within 5 minutes."""
        if self.credential_refresh is not None and self.credentials_expire is not None:
            with self._refresh_lock:
                if time.time() > self.credentials_expire - REFRESH_MARGIN:
                    key, secret, token, expires = self.credential_refresh()
                    self.set_credentials(key, secret, token)
                    self.credentials_expire = expires
                    log.info("refreshed credentials; they expire in %.0f s", (expires or 0) - time.time())
        return self.signer

    def set_credentials(
        self, access_key_id: str, secret_access_key: str, session_token: str | None = None
    ) -> None:
        """Swap in fresh credentials (e.g. from a credential_process)."""
        self.access_key_id = access_key_id
        self.signer = SigV4Signer(access_key_id, secret_access_key, self.region, session_token=session_token)

    # -- transport -----------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections (the connection stays usable: it reconnects)."""
        self._transport.close()

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: Any,
        stream: bool,
        read_timeout: float | None = None,
    ) -> Response:
        """One HTTP exchange through the shared pool (thread-safe: urllib3's pool is); a body
        not streamed is read whole, and the connection is back in the pool, when it returns."""
        return self._transport.send(method, url, headers, data, stream, read_timeout)

    def _host_and_path(self, bucket: str | None, key: str, region: str | None = None) -> tuple[str, str]:
        """Host and path of ``bucket``/``key``; ``region``: the bucket's, where S3 named another."""
        encoded_key = uri_encode(key, safe="/")
        endpoint = self._endpoint_in(region or self.region)
        if not bucket:
            return endpoint, "/"
        if self.path_style or not virtual_hostable(bucket):
            if not key:
                return endpoint, "/" + uri_encode(bucket)
            return endpoint, "/%s/%s" % (uri_encode(bucket), encoded_key)
        return "%s.%s" % (bucket, endpoint), "/" + encoded_key

    # -- regions -----------------------------------------------------------------------------

    def region_for(self, bucket: str | None) -> str:
        """The region requests for ``bucket`` are signed for: the one S3 named, else ``region``."""
        with self._region_lock:
            return self._bucket_regions.get(bucket or "", self.region)

    def _endpoint_in(self, region: str) -> str:
        """The endpoint for a bucket in ``region``: an AWS regional one follows it (s3.us-east-1 ->
        s3.eu-west-1); any other stays as it is."""
        named = self._endpoint_region
        if region == self.region or not named or named == region or named not in self.endpoint:
            return self.endpoint
        return self.endpoint.replace(named, region, 1)

    def _learn_region(self, bucket: str | None, resp: Response) -> bool:
        """Did S3 answer that ``bucket`` is in another region? Then remember it, say so once,
        and tell the caller to sign again: a 301 or 400 with ``x-amz-bucket-region``, or an
        ``AuthorizationHeaderMalformed`` body naming the ``Region`` expected."""
        if not bucket or resp.status_code not in (301, 307, 400):
            return False
        region = resp.headers.get("x-amz-bucket-region", "")
        if not region and resp.content and b"AuthorizationHeaderMalformed" in resp.content:
            region = xmlparse.parse_text(resp.content, "Region")
        if not region or region == self.region_for(bucket):
            return False
        with self._region_lock:
            self._bucket_regions[bucket] = region
        log.warning(
            "bucket %s is in region %s, not %s: signing for %s from now on (set region: %s to skip this)",
            bucket,
            region,
            self.region,
            region,
            region,
        )
        return True

    def request(
        self,
        method: str,
        bucket: str | None,
        key: str = "",
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        payload_hash: str | None = None,
        expect: Iterable[int] = (200,),
        stream: bool = False,
        retry: bool = True,
        read_timeout: float | None = None,
        give_up: GiveUp | None = None,
    ) -> Response:
        """Send one signed request, retried by the retry policy.

        ``body`` is bytes, a :class:`~s3fs_mount.s3.keepalive.FileSpan` (sent from the file at
        each attempt), or a zero-argument callable returning a fresh file-like object for each
        attempt (so streamed uploads can retry).
        Returns the response when its status is in ``expect``; raises
        :class:`S3Error` otherwise, or :class:`TransportError` (also the requests
        exception of its kind) on a transport failure once retries are spent; ValueError,
        before sending, for a header that cannot be sent (:func:`check_headers`).
        ``read_timeout``: seconds to wait between bytes of the answer, for a request the server
        may take long to answer (a server-side copy); default :attr:`timeout`.
        ``give_up``: the job this request is part of (the parts of one upload): see
        :class:`~s3fs_mount.s3.retry.GiveUp`.
        """
        sending = _Request(
            self, method, bucket, key, query, headers, body, payload_hash, expect, stream, read_timeout
        )
        if not retry:
            return sending.attempt()
        return self.retry.call(sending.attempt, sending.what, give_up=give_up, change=method in CHANGES)

    def send_ahead(
        self, bucket: str | None, key: str, headers: Mapping[str, str], then: Callable[[Response], T]
    ) -> Pending[T] | None:
        """A HEAD sent ahead of need (a walk's stats: fs/statahead.py) by the one thread of the
        request pipeline (s3/pipelined.py), beside up to :data:`AHEAD_SOCKETS` others; None where
        there is none (through a proxy: send :meth:`request` in threads of your own).

        Its :class:`~s3fs_mount.s3.pipelined.Pending` gives ``then(response)`` or raises what
        :meth:`request` raises for it: signed, counted and retried as every request (a failed
        first try is tried again by the retry policy, in a thread of its own), and while S3 is
        unreachable it fails at once, unsent (s3/retry.py ``ahead_of_need``). It is signed here,
        and ``then`` runs in the thread that asks ``result()``: the pipeline's thread only sends
        and reads.
        """
        pipeline = self._pipeline()
        if pipeline is None:
            return None
        sending = _Request(self, "HEAD", bucket, key, None, headers, None, None, (200,), False, None)
        ahead = _SentAhead(sending, then)
        pipeline.submit(ahead)
        return ahead

    def _pipeline(self) -> Pipeline | None:
        """The request pipeline (made at its first use), or None through a proxy."""
        if self._ahead is None and self._transport.kept_alive is not None:
            with self._ahead_lock:
                if self._ahead is None:
                    pool = self._transport.kept_alive
                    self._ahead = Pipeline(pool, AHEAD_SOCKETS, ahead_of_need, "s3-ahead")
        return self._ahead

    @staticmethod
    def retry_ahead(attempts: Callable[[], None]) -> None:
        """Run ``attempts`` (a request sent ahead whose first try failed: the retry policy's
        next tries, with its pauses) in a thread of its own, as sent ahead of need. One thread
        each: failures are rare, and bounded by what is in flight (while S3 is unreachable the
        others fail unsent); a daemon, as the stat-ahead's workers: an unmount waits for none."""
        threading.Thread(target=_ahead_of_need, args=(attempts,), name="s3-ahead-retry", daemon=True).start()

    def _with_object_options(self, operation: str, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` and what :attr:`object_options` asks of ``operation`` (which wins)."""
        extra = self.object_options.headers(operation)
        if not extra:
            return headers
        names = {name.lower() for name in extra}
        out = {name: value for name, value in headers.items() if name.lower() not in names}
        out.update(extra)
        return out

    @staticmethod
    def _error_in_body(resp: Response, what: str, stream: bool = False) -> S3Error | None:
        """A 200 whose body is an ``<Error>``: AWS failed a copy or a completion after it sent
        the status. Such an answer is no success: it counts as a 500, which the retry policy
        retries (as the AWS SDKs do)."""
        if stream or b"<Error>" not in resp.content.lstrip()[:512]:  # AWS may send spaces first
            return None
        err = xmlparse.parse_error(resp.content)
        if "Code" not in err:
            return None
        log.warning("%s: S3 answered 200 with an error (%s): a failure", what, err["Code"])
        return S3Error(500, err["Code"], err.get("Message", ""), err.get("RequestId", ""), what)

    @staticmethod
    def _error(resp: Response, what: str) -> S3Error:
        code = message = ""
        request_id = resp.headers.get("x-amz-request-id", "")
        try:
            content = resp.content if resp.method != "HEAD" else b""
        except urllib3.exceptions.HTTPError:
            content = b""
        if content:
            err = xmlparse.parse_error(content)
            code = err.get("Code", "")
            message = err.get("Message", "")
            request_id = err.get("RequestId", request_id)
        resp.close()
        return S3Error(resp.status_code, code, message, request_id, what)


KNOWN_SETTINGS = (
    "credentials_expire",
    "credential_refresh",
    "access_key_id",
    "secret_access_key",
    "default_bucket",
    "endpoint",
    "tls",
    "region",
    "path_style",
    "session_token",
    "verify_tls",
    "timeout",
    "max_connections",
    "storage_class",
    "sse",
    "sse_c_key_file",
    "requester_pays",
    "acl",
)
