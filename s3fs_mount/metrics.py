"""Prometheus metrics of a mount: ``-o metrics=127.0.0.1:9108``.

Served in Prometheus's text format by ``prometheus_client`` (its own
registry, not the process-wide default), from a thread of the mount::

    curl -s http://127.0.0.1:9108/metrics | grep s3fs_s3_requests_total

What is measured, and who tells us:

==========================================  =============================================
metric                                      source
==========================================  =============================================
``s3fs_s3_requests_total{method,status}``   every attempt the connector sends (``status``
                                            ``error`` when no answer came)
``s3fs_s3_retries_total``                   attempts after the first, by the retry policy
``s3fs_s3_bytes_total{direction}``          request and response bodies (up / down)
``s3fs_s3_request_duration_seconds``        until the answer's headers, per method
``s3fs_fuse_operations_total{operation,     every call the kernel makes (``result``: ``ok``
result}``                                   or the errno's name)
``s3fs_fuse_operation_duration_seconds``    per operation
``s3fs_cache_bytes``                        the staging cache's disk use
``s3fs_dirty_bytes``                        bytes of files not yet in S3
``s3fs_upload_queue_files``                 files waiting to upload (or uploading)
==========================================  =============================================

The connector and the FUSE adapter know nothing of Prometheus: they call an
observer (:class:`Metrics` is one) when one is set.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

#: Latency buckets (seconds) for S3 requests and FUSE calls: 100 us to 30 s.
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters and histograms of one mount, and the HTTP endpoint that serves them.

    ::

        >>> metrics = Metrics()
        >>> connection.stats.observer = metrics        # S3 requests and retries
        >>> metrics.watch(ops.gauges)                   # cache, dirty bytes, upload queue
        >>> metrics.serve('127.0.0.1', 9108)

    Thread-safe: prometheus_client's metrics lock themselves.
    """

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created sample beside each counter: half the text, no news
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "s3fs_s3_requests",
            "S3 requests sent, by method and HTTP status",
            ["method", "status"],
            registry=r,
        )
        self.retries = Counter("s3fs_s3_retries", "S3 attempts after the first (retry policy)", registry=r)
        self.bytes = Counter(
            "s3fs_s3_bytes", "S3 body bytes, by direction (up, down)", ["direction"], registry=r
        )
        self.request_seconds = Histogram(
            "s3fs_s3_request_duration_seconds",
            "S3 request latency until the answer's headers",
            ["method"],
            buckets=BUCKETS,
            registry=r,
        )
        self.fuse_calls = Counter(
            "s3fs_fuse_operations",
            "FUSE operations, by operation and result",
            ["operation", "result"],
            registry=r,
        )
        self.fuse_seconds = Histogram(
            "s3fs_fuse_operation_duration_seconds",
            "FUSE operation latency",
            ["operation"],
            buckets=BUCKETS,
            registry=r,
        )
        self._server: Any = None

    # -- observers: called by the connector (RequestStats) and the FUSE adapter ------------

    def request(self, method: str, status: int | None, up: int, down: int, seconds: float) -> None:
        """One S3 attempt: ``status`` None when no answer came (a transport error)."""
        self.requests.labels(method, str(status) if status is not None else "error").inc()
        if up:
            self.bytes.labels("up").inc(up)
        if down:
            self.bytes.labels("down").inc(down)
        self.request_seconds.labels(method).observe(seconds)

    def retry(self) -> None:
        self.retries.inc()

    def fuse_call(self, operation: str, seconds: float, result: int) -> None:
        """One FUSE call; ``result`` 0 or a negative errno."""
        code = errno.errorcode.get(-result, str(-result)) if result < 0 else "ok"
        self.fuse_calls.labels(operation, code).inc()
        self.fuse_seconds.labels(operation).observe(seconds)

    # -- gauges and serving ------------------------------------------------------------------

    def watch(self, gauges: Callable[[], dict[str, float]]) -> None:
        """Read ``cache_bytes``, ``dirty_bytes`` and ``upload_queue_files`` from ``gauges`` per scrape."""
        self.registry.register(_Gauges(gauges))

    def serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (a daemon thread). :raises OSError: if it cannot."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics at http://%s:%d/metrics", host if ":" not in host else "[%s]" % host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class _Gauges:
    """A prometheus_client collector of the values the filesystem reports at scrape time."""

    HELP = {
        "cache_bytes": "disk used by the staging cache",
        "dirty_bytes": "bytes of files not yet in S3",
        "upload_queue_files": "files waiting to upload, or uploading",
    }

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self._read()
        for name, text in self.HELP.items():
            yield GaugeMetricFamily("s3fs_" + name, text, value=float(values.get(name, 0)))
