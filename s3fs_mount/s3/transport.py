"""How a signed request travels: kept-alive sockets of our own, or urllib3's pools.

``S3Connection`` signs; :class:`Transport` sends the signed bytes and hands back a
:class:`Response`. A request whose body is in memory (or none) and whose answer is read whole
(a HEAD, a DELETE, a listing page, a small PUT, a part sent from the staged file as a
:class:`~s3fs_mount.s3.keepalive.FileSpan`) goes through :class:`KeptAlivePool`
(:mod:`s3fs_mount.s3.keepalive`): half the CPU of urllib3 and ``http.client`` for a HEAD
(bench/README.md "A transport of our own"). Everything else (a body streamed from a file, an
answer read as a stream, and every request when the environment names a proxy) goes through
urllib3's pools, which requests chose and built (its ``HTTPAdapter``: pool sizes, proxies from
the environment, proxy authentication, SOCKS, the CA bundle); requests' per-request machinery
(PreparedRequest, the adapter's URL parsing, its Response and header copies) is not used.

Bodies are never decoded (``Accept-Encoding: identity`` is asked for): an object stored with
``Content-Encoding: gzip`` is read as the bytes it holds, as by every other S3 client; decoded,
its size and checksums would not be its own.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from s3fs_mount.s3.keepalive import FileSpan, KeptAlivePool

log = logging.getLogger(__name__)


class Response:
    """One answer of S3, as the connector reads it.

    :attr:`status_code`, :attr:`headers` (case-insensitive), :attr:`content` (the whole body),
    :attr:`raw` (urllib3's response, to read a streamed body from; None when the body was read
    whole by :class:`KeptAlivePool`) and :attr:`method` (of the request). Close it (or use
    ``with``) when a streamed body is not read to its end: that drops the connection; a body
    read whole gives the connection back to the pool.
    """

    __slots__ = ("status_code", "headers", "raw", "method", "_content")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        method: str,
        content: bytes | None = None,
        raw: urllib3.BaseHTTPResponse | None = None,
    ) -> None:
        self.status_code = status
        self.headers = headers
        self.method = method
        self.raw = raw
        self._content = content

    @classmethod
    def of(cls, raw: urllib3.BaseHTTPResponse, method: str, stream: bool) -> Response:
        """The answer urllib3 read (its body too, unless ``stream``)."""
        return cls(raw.status, raw.headers, method, None if stream else raw.data, raw)

    @property
    def content(self) -> bytes:
        """The body (read now if the request was streamed)."""
        if self._content is None:
            assert self.raw is not None
            self._content = self.raw.read(decode_content=False)
        return self._content

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """The body in pieces of up to ``chunk_size`` bytes."""
        if self.raw is None:
            body = self.content
            return iter([body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
        return self.raw.stream(chunk_size, decode_content=False)

    def close(self) -> None:
        """Let the connection go: back to the pool if the body was read, else closed."""
        if self.raw is not None:
            self.raw.close()
            self.raw.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<Response [%d]>" % self.status_code


#: Bodies :class:`KeptAlivePool` sends (a file-like body, read as it goes, goes through urllib3).
_IN_MEMORY = (bytes, bytearray, memoryview, FileSpan)


@functools.lru_cache(maxsize=64)
def _host_port(host: str, default: int) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` too) as (host, port)."""
    parsed = urllib3.util.parse_url("//" + host)
    return parsed.host or host, parsed.port or default


class Transport:
    """A pool of connections all threads share, to one endpoint's hosts.

    :param scheme: ``http`` or ``https``.
    :param endpoint: ``host[:port]``: what the environment's proxy settings are looked up for.
    :param verify: False, True (requests' CA bundle) or a CA bundle's path (file or directory).
    :param timeout: seconds to connect (at most 10) and between bytes read.
    :param max_connections: connections kept per host.

    The environment's proxies (``HTTPS_PROXY``, ``NO_PROXY``, ...) are read once, here, as
    requests reads them; a request for an ``https`` endpoint through a proxy is tunnelled,
    one for ``http`` is sent to the proxy by its absolute URL, as requests does. With a proxy
    every request goes through urllib3; without one, a request whose body is in memory and
    whose answer is read whole goes through :attr:`kept_alive`.
    """

    def __init__(
        self, scheme: str, endpoint: str, verify: bool | str, timeout: float, max_connections: int
    ) -> None:
        self.scheme = scheme
        self._default_port = 443 if scheme == "https" else 80
        #: Builds and owns the urllib3 pool managers (requests' settings); never sends.
        self._adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_connections, max_retries=0)
        self.proxies: dict[str, str] = requests.utils.get_environ_proxies("%s://%s" % (scheme, endpoint))
        proxy = requests.utils.select_proxy("%s://%s" % (scheme, endpoint), self.proxies)
        if proxy:
            proxy = requests.utils.prepend_scheme_if_needed(proxy, "http")
        self.proxy: str | None = proxy
        self._manager: urllib3.PoolManager = (
            self._adapter.proxy_manager_for(proxy) if proxy else self._adapter.poolmanager
        )
        #: An http request through a (non-SOCKS) proxy names the whole URL (the proxy forwards it).
        self._absolute = bool(proxy) and scheme == "http" and not proxy.lower().startswith("socks")
        self._pool_kwargs: dict[str, Any] = {"cert_reqs": "CERT_NONE"}
        if verify is not False and scheme == "https":
            bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
            where = "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"
            self._pool_kwargs = {"cert_reqs": "CERT_REQUIRED", where: bundle}
        self._timeout = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
        #: Our own kept-alive connections (None through a proxy: urllib3 speaks to proxies).
        self.kept_alive: KeptAlivePool | None = None
        if not proxy:
            bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH
            self.kept_alive = KeptAlivePool(scheme, verify, bundle, timeout, max_connections)
        if proxy:
            log.info("requests to %s go through the proxy %s", endpoint, requests.utils.urldefragauth(proxy))

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        stream: bool,
        read_timeout: float | None = None,
    ) -> Response:
        """One exchange: ``url`` is ``scheme://host[:port]/path?query``, already encoded as signed.
        ``read_timeout``: seconds between bytes read for this one (default: the transport's).

        Raises urllib3's exceptions (no retries here: the retry policy decides).
        """
        name, port, target = self.address(url)
        if self.kept_alive is not None and not stream and (body is None or isinstance(body, _IN_MEMORY)):
            status, found, content = self.kept_alive.exchange(
                method, name, port, target, headers, body, read_timeout
            )
            return Response(status, found, method, content)
        headers = {**headers, "Accept-Encoding": "identity"}  # see the module's docstring
        if isinstance(body, FileSpan):
            try:
                body = body.read()  # through a proxy: the bytes pass through Python
            except OSError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from exc
        if body is not None and "Content-Length" not in headers:
            length = (
                len(body)
                if isinstance(body, (bytes, bytearray, memoryview))
                else requests.utils.super_len(body)
            )
            if length:  # else chunked, as requests sends a body of unknown length
                headers = {**headers, "Content-Length": str(length)}
        pool = self._manager.connection_from_host(name, port, self.scheme, pool_kwargs=self._pool_kwargs)
        raw = pool.urlopen(
            method,
            target,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=not stream,
            decode_content=False,
            timeout=(
                self._timeout
                if read_timeout is None
                else urllib3.Timeout(connect=self._timeout.connect_timeout, read=read_timeout)
            ),
        )
        return Response.of(raw, method, stream)

    def address(self, url: str) -> tuple[str, int, str]:
        """Where ``url`` (``scheme://host[:port]/path?query``) is sent: (host, port, the request
        line's target: its path and query, or the whole URL for a proxy that forwards it)."""
        host, slash, rest = url[len(self.scheme) + 3 :].partition("/")
        name, port = _host_port(host, self._default_port)
        return name, port, url if self._absolute else slash + rest

    def clear(self) -> None:
        """Drop every pooled connection (the server may have restarted: all are dead)."""
        self._manager.clear()
        if self.kept_alive is not None:
            self.kept_alive.clear()

    def close(self) -> None:
        """Close the pooled connections (the transport stays usable: it reconnects)."""
        self._adapter.close()
        if self.kept_alive is not None:
            self.kept_alive.clear()
