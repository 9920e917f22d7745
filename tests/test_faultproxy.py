"""Unit tests for tests/faultproxy.py against a tiny http.server upstream."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from faultproxy import FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    """Echo-ish upstream: GET returns the path, PUT returns the body length."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "123")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = f"got {len(data)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    """A threaded http.server on 127.0.0.1."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "127.0.0.1", srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(upstream: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*upstream) as p:
        yield p


def test_fail_next_then_success(proxy: FaultProxy) -> None:
    proxy.fail_next(2)
    with requests.Session() as s:  # one keep-alive connection carries all requests
        r1 = s.get(f"{proxy.url}/a")
        r2 = s.get(f"{proxy.url}/b")
        r3 = s.get(f"{proxy.url}/c")
    assert r1.status_code == 503 and r2.status_code == 503
    assert "<Code>SlowDown</Code>" in r1.text
    assert r3.status_code == 200 and r3.text == "hello /c"
    assert proxy.requests == 3 and proxy.forwarded == 1


def test_status_and_code(proxy: FaultProxy) -> None:
    proxy.fail_next(1, status=500)
    proxy.fail_next(1, status=503, code="ServiceUnavailable")
    r1 = requests.get(f"{proxy.url}/x")
    r2 = requests.get(f"{proxy.url}/x")
    assert r1.status_code == 500 and "<Code>InternalError</Code>" in r1.text
    assert r2.status_code == 503 and "<Code>ServiceUnavailable</Code>" in r2.text


def test_keepalive_put_and_head(proxy: FaultProxy) -> None:
    with requests.Session() as s:
        assert s.put(f"{proxy.url}/k", data=b"x" * 100000).text == "got 100000"
        proxy.fail_next(1)
        assert s.put(f"{proxy.url}/k", data=b"y" * 5000).status_code == 503
        assert s.put(f"{proxy.url}/k", data=b"z" * 7).text == "got 7"
        h = s.head(f"{proxy.url}/k")
        assert h.status_code == 200 and h.headers["Content-Length"] == "123"
        assert s.get(f"{proxy.url}/after-head").text == "hello /after-head"
    assert proxy.requests == 5
    assert [m for m, _ in proxy.seen] == ["PUT", "PUT", "PUT", "HEAD", "GET"]


def test_drop_next(proxy: FaultProxy) -> None:
    proxy.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/d")
    assert requests.get(f"{proxy.url}/e").text == "hello /e"


def test_mode_and_stall(proxy: FaultProxy) -> None:
    proxy.mode = "fail"
    assert requests.get(f"{proxy.url}/m").status_code == 503
    proxy.mode = "pass"
    proxy.stall(0.5)
    t0 = time.monotonic()
    assert requests.get(f"{proxy.url}/s").status_code == 200
    assert time.monotonic() - t0 >= 0.5
    proxy.stall(0)
    with pytest.raises(requests.Timeout):
        proxy.stall(2)
        requests.get(f"{proxy.url}/t", timeout=0.3)


def test_fail_parts_after(proxy: FaultProxy) -> None:
    part = f"{proxy.url}/b/k?partNumber=%d&uploadId=u1"
    proxy.fail_parts_after(1)
    with requests.Session() as s:
        assert s.put(part % 1, data=b"x" * 10).text == "got 10"
        assert s.put(f"{proxy.url}/b/k", data=b"p").text == "got 1"  # no part: passes
        assert s.put(part % 1, headers={"x-amz-copy-source": "/b/src"}).status_code == 200  # a copy
        refused = s.put(part % 2, data=b"y" * 10)
        assert refused.status_code == 500 and "<Code>InternalError</Code>" in refused.text
        assert s.put(part % 3, data=b"z").status_code == 500
        proxy.reset()
        assert s.put(part % 3, data=b"z").text == "got 1"
