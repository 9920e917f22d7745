"""How a signed request travels: urllib3's connection pools, with requests' settings.

``S3Connection`` signs; :class:`Transport` sends the signed bytes through urllib3's pool and
hands back a :class:`Response`. requests chose and built the pools (its ``HTTPAdapter``: pool
sizes, proxies from the environment, proxy authentication, SOCKS, the CA bundle); its
per-request machinery (PreparedRequest, the adapter's URL parsing, TLS and proxy look-ups,
its Response and header copies) cost 0.1-0.25 ms of CPU per request, 15-28% of a HEAD's
(``bench/requests_cpu.py``, bench/README.md "CPU per request"), and is not used.
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

log = logging.getLogger(__name__)


class Response:
    """One answer of S3, as the connector reads it.

    :attr:`status_code`, :attr:`headers` (case-insensitive), :attr:`content` (the whole body),
    :attr:`raw` (urllib3's response, to read a streamed body from) and :attr:`method` (of the
    request). Close it (or use ``with``) when a streamed body is not read to its end: that
    drops the connection; a body read whole gives the connection back to the pool.
    """

    __slots__ = ("status_code", "headers", "raw", "method", "_content")

    def __init__(self, raw: urllib3.BaseHTTPResponse, method: str, stream: bool) -> None:
        self.raw = raw
        self.method = method
        self.status_code: int = raw.status
        self.headers: Mapping[str, str] = raw.headers
        self._content: bytes | None = None if stream else raw.data

    @property
    def content(self) -> bytes:
        """The body (read now if the request was streamed)."""
        if self._content is None:
            self._content = self.raw.read(decode_content=True)
        return self._content

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """The body in pieces of up to ``chunk_size`` bytes."""
        return self.raw.stream(chunk_size, decode_content=True)

    def close(self) -> None:
        """Let the connection go: back to the pool if the body was read, else closed."""
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
    one for ``http`` is sent to the proxy by its absolute URL, as requests does.
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
        if proxy:
            log.info("requests to %s go through the proxy %s", endpoint, requests.utils.urldefragauth(proxy))

    def send(self, method: str, url: str, headers: dict[str, str], body: Any, stream: bool) -> Response:
        """One exchange: ``url`` is ``scheme://host[:port]/path?query``, already encoded as signed.

        Raises urllib3's exceptions (no retries here: the retry policy decides).
        """
        host, slash, rest = url[len(self.scheme) + 3 :].partition("/")
        target = url if self._absolute else slash + rest
        if body is not None and "Content-Length" not in headers:
            length = (
                len(body)
                if isinstance(body, (bytes, bytearray, memoryview))
                else requests.utils.super_len(body)
            )
            if length:  # else chunked, as requests sends a body of unknown length
                headers = {**headers, "Content-Length": str(length)}
        name, port = _host_port(host, self._default_port)
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
            decode_content=True,
            timeout=self._timeout,
        )
        return Response(raw, method, stream)

    def clear(self) -> None:
        """Drop every pooled connection (the server may have restarted: all are dead)."""
        self._manager.clear()

    def close(self) -> None:
        """Close the pooled connections (the transport stays usable: it reconnects)."""
        self._adapter.close()
