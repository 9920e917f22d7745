"""A tiny fault-injecting HTTP/1.1 proxy on 127.0.0.1 for S3 client tests.

Point the client at ``proxy.endpoint`` instead of the real server::

    with FaultProxy("127.0.0.1", 8333) as proxy:
        proxy.fail_next(2)          # next 2 requests -> 503 SlowDown (not forwarded)
        proxy.drop_next(1)          # then 1 request -> connection closed, no response
        proxy.stall(1.5)            # delay every forwarded request by 1.5 s (stall(0) ends)
        proxy.stall_copies(1.5)     # delay every CopyObject and UploadPartCopy by 1.5 s
        proxy.mode = "fail"         # every request fails ("pass" restores; "drop" drops)
        proxy.flip_request(1)       # the next PUT's body reaches the server with one byte changed
        proxy.flip_response(1)      # the next GET's body reaches the client with one byte changed
        proxy.error_in_200(1)       # the next copy or multipart completion: 200 with an <Error> body
        proxy.delete_errors(1)      # the next DeleteObjects: 200, every key of it failed (InternalError)
        proxy.hold_deletes()        # DeleteObjects wait (held, counted in ``holding``) until release()
        proxy.hold_until(held, freed, limit)  # a request held(m, t) names waits for one freed(m, t)
                                    # names the same (or ``limit`` s): ``held_outcomes`` says which
        proxy.hold_gets()           # ranged GETs wait (listed in ``holding_gets``) until release_gets()
        proxy.fail_parts_after(3)   # 3 more UploadParts pass, then every one is a 500 (until reset)
        proxy.fail_where(f, 403)    # every request f(method, target) is true of: a 403 (not forwarded;
                                    # 0: the connection closed unanswered)
        proxy.heard                 # (method, target, {header: value}) of every request, names lower-case
        proxy.heard_at              # (time.monotonic(), method, target) of every request, as it came

Each client connection is served by its own thread, which parses requests
(headers up to CRLFCRLF, then a Content-Length or chunked body) so keep-alive
connections carrying several requests are handled request by request.  Each
forwarded request uses a fresh upstream connection; the response is relayed
to the client as it arrives (Content-Length, chunked, or until upstream EOF).
``Expect: 100-continue`` is answered by the proxy itself.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger(__name__)

MAX_LINE = 65536
#: (method, target) -> a name, or None (hold_until's rules).
Naming = Callable[[str, str], "str | None"]
MAX_HEADERS = 200

S3_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    409: ("OperationAborted", "A conflicting conditional operation is in progress."),
    429: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    502: ("BadGateway", "Bad Gateway"),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway Timeout"),
}

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Closed(Exception):
    """The peer closed the connection (cleanly, between requests or mid-message)."""


@dataclass
class Request:
    """One parsed client request (raw bytes kept for forwarding)."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    #: Which request this was to arrive (FaultProxy.requests when it came).
    arrived: int = 0

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def wants_close(self) -> bool:
        """True if the client asked to close the connection after this request."""
        conn = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


def _flipped(body: bytes, at: int | None = None) -> bytes:
    """``body`` with its byte ``at`` (default: its middle one) inverted."""
    i = len(body) // 2 if at is None else at
    return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]


def _readline(rfile: BinaryIO) -> bytes:
    """Read one CRLF/LF-terminated line; raise _Closed on EOF."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        raise _Closed()
    if len(line) > MAX_LINE:
        raise ValueError("line too long")
    return line


def _read_head(rfile: BinaryIO) -> tuple[bytes, list[bytes]]:
    """Read a start line and header lines (raw, CRLF included) up to the blank line."""
    start = _readline(rfile)
    while start in (b"\r\n", b"\n"):  # tolerate stray CRLF between messages
        start = _readline(rfile)
    lines: list[bytes] = []
    while True:
        line = _readline(rfile)
        if line in (b"\r\n", b"\n"):
            return start, lines
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise ValueError("too many headers")


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    """Turn raw header lines into (name, value) pairs."""
    out = []
    for raw in lines:
        name, _, value = raw.decode("latin-1").partition(":")
        out.append((name.strip(), value.strip()))
    return out


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes or raise _Closed."""
    data = rfile.read(n)
    if len(data) != n:
        raise _Closed()
    return data


def _copy_exact(rfile: BinaryIO, n: int, out: socket.socket) -> None:
    """Relay exactly n bytes from rfile to out in chunks."""
    while n > 0:
        chunk = rfile.read(min(n, 65536))
        if not chunk:
            raise _Closed()
        out.sendall(chunk)
        n -= len(chunk)


def _copy_chunked(rfile: BinaryIO, emit: Callable[[bytes], object]) -> None:
    """Relay a chunked body (including trailers) verbatim through ``emit``."""
    while True:
        size_line = _readline(rfile)
        emit(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers up to the blank line
                line = _readline(rfile)
                emit(line)
                if line in (b"\r\n", b"\n"):
                    return
        emit(_read_exact(rfile, size))
        emit(_readline(rfile))  # CRLF after chunk data


def _header(headers: list[tuple[str, str]], name: str) -> str:
    """The value of header ``name`` (lower case), or ""."""
    return next((v for k, v in headers if k.lower() == name), "")


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    """Return Content-Length as int, or None if absent."""
    for k, v in headers:
        if k.lower() == "content-length":
            return int(v)
    return None


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    """True if Transfer-Encoding ends in chunked."""
    for k, v in headers:
        if k.lower() == "transfer-encoding" and v.lower().rstrip().endswith("chunked"):
            return True
    return False


def s3_error_response(status: int, method: str = "GET", code: str | None = None,
                      close: bool = False, message: str | None = None) -> bytes:
    """Build a complete canned S3-style XML error response."""
    default_code, default_message = S3_ERRORS.get(status, ("ServiceUnavailable", "Service Unavailable"))
    code = code or default_code
    message = message or default_message
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    reason = REASONS.get(status, "Error")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        "x-amz-request-id: FAULTPROXY",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    if status in (429, 503):
        head.append("Retry-After: 0")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode()
    return raw if method == "HEAD" else raw + body


def error_200_response(code: str, close: bool = False) -> bytes:
    """What AWS may answer a CopyObject, UploadPartCopy or CompleteMultipartUpload that failed after
    the status went out: 200, with an ``<Error>`` body (after the spaces it sends while it works)."""
    message = "We encountered an internal error. Please try again."
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + " " * 8 + "\n"
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    head = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        "x-amz-request-id: FAULTPROXY",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def is_delete_objects(method: str, target: str) -> bool:
    """A DeleteObjects (``POST /bucket?delete``)."""
    return method == "POST" and re.search(r"[?&]delete(=|&|$)", target) is not None


def delete_errors_response(body: bytes, code: str, close: bool = False) -> bytes:
    """A DeleteObjects answer that names every key of request ``body`` as failed with ``code``."""
    keys = re.findall(rb"<Key>(.*?)</Key>", body)
    errors = b"".join(
        b"<Error><Key>%s</Key><Code>%s</Code><Message>faultproxy</Message></Error>" % (k, code.encode())
        for k in keys
    )
    xml = b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult>' + errors + b"</DeleteResult>"
    head = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/xml",
        f"Content-Length: {len(xml)}",
        "x-amz-request-id: FAULTPROXY",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + xml


def is_upload_part(method: str, target: str, headers: list[tuple[str, str]]) -> bool:
    """An UploadPart with a body (``PUT ...?partNumber=N&uploadId=...``, no copy source)."""
    if method != "PUT" or "partNumber=" not in target or "uploadId=" not in target:
        return False
    return not any(k.lower() == "x-amz-copy-source" for k, _ in headers)


def is_copy_or_completion(method: str, target: str, headers: list[tuple[str, str]]) -> bool:
    """A CopyObject, UploadPartCopy or CompleteMultipartUpload: what AWS may fail with a 200."""
    if method == "PUT":
        return any(k.lower() == "x-amz-copy-source" for k, _ in headers)
    return method == "POST" and "uploadId=" in target


def wrong_region_response(method: str, region: str, signed_for: str, close: bool = False) -> bytes:
    """What AWS answers a request signed for another region than the bucket's: a HEAD gets
    301 with ``x-amz-bucket-region`` (it has no body), the rest 400 AuthorizationHeaderMalformed
    naming the ``Region`` expected."""
    if method == "HEAD":
        status, reason, body = 301, "Moved Permanently", b""
    else:
        status, reason = 400, "Bad Request"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed</Code>'
            f"<Message>The authorization header is malformed; the region '{signed_for}' is wrong; "
            f"expecting '{region}'</Message><Region>{region}</Region><RequestId>FAULTPROXY</RequestId>"
            "</Error>"
        ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        f"x-amz-bucket-region: {region}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def signed_region(headers: list[tuple[str, str]]) -> str | None:
    """The region of a SigV4 Authorization header's credential scope."""
    for name, value in headers:
        if name.lower() == "authorization" and "Credential=" in value:
            scope = value.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            return scope[2] if len(scope) > 2 else None
    return None


class FaultProxy:
    """Threaded TCP/HTTP proxy on 127.0.0.1 whose faults can be changed at run time.

    Attributes: ``mode`` ('pass' | 'fail' | 'drop'), ``fail_status`` (status used
    by mode 'fail'), ``requests`` (requests seen), ``forwarded`` (requests sent
    upstream), ``seen`` (list of ``(method, target)`` of every request seen).
    """

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        """Bind a listening socket on a free port of ``host`` (not yet serving)."""
        self.upstream = (upstream_host, int(upstream_port))
        self.mode = "pass"
        self.fail_status = 503
        self.requests = 0
        self.forwarded = 0
        self.accepted = 0  # client connections accepted
        self.seen: list[tuple[str, str]] = []
        #: (method, target, headers with lower-case names) of every request seen.
        self.heard: list[tuple[str, str, dict[str, str]]] = []
        #: (time.monotonic(), method, target) of every request seen, when its head was read.
        self.heard_at: list[tuple[float, str, str]] = []
        self._errors_in_200: list[str] = []  # codes for the next copies/completions
        self._delete_errors: list[str] = []  # codes for the next DeleteObjects (every key fails)
        self._released = threading.Event()  # set: DeleteObjects pass (else held until it is)
        self._released.set()
        self.holding = 0  # DeleteObjects held now
        self._gets_go = threading.Event()  # set: ranged GETs pass (else held until it is)
        self._gets_go.set()
        self.holding_gets: list[tuple[str, str]] = []  # (target, range) of the ranged GETs held now
        self._release_forwards = False
        #: hold_until: (held, freed, limit) or None; names freed so far; (name, "request"/"limit")
        #: of each held request, as it went on. GUARDED_BY(_freed_cond).
        self._hold_until: tuple[Naming, Naming, float] | None = None
        self._freed: set[str] = set()
        self._freed_cond = threading.Condition()
        self.held_outcomes: list[tuple[str, str]] = []
        self.errors_in_200 = 0  # such answers given
        #: As AWS does for a bucket in this region: a request signed for another is refused.
        self.bucket_region: str | None = None
        self.wrong_region = 0  # requests refused so
        self._lock = threading.Lock()
        self._fail_queue: list[tuple[int, str | None, str | None]] = []
        self._drop_count = 0
        #: UploadParts still to pass before each is failed with _parts_status (None: all pass).
        self._parts_pass: int | None = None
        self._parts_status = 500
        self._fail_where: tuple[Callable[[str, str], object], int] | None = None  # see fail_where
        self._stall = 0.0
        self._stall_copies = 0.0
        self._flip_requests = 0  # PUT bodies still to corrupt (one byte each)
        self._flip_responses = 0  # GET response bodies still to corrupt
        self._flip_status = 206  # ... with this status
        self._flip_offsets: list[int] = []  # object offsets to change in the next GET answers holding them
        self._flip_after = 0  # GET answers are changed only to requests that came after this one
        self.flipped: list[tuple[str, str]] = []  # (method, target) of every body corrupted
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.5)  # accept loop re-checks _stop at least this often
        self.host, self.port = self._sock.getsockname()[:2]
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"`` of the proxy."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.endpoint}"

    def fail_next(
        self, n: int = 1, status: int = 503, code: str | None = None, message: str | None = None
    ) -> None:
        """Answer the next ``n`` requests with a canned S3 XML error (not forwarded); ``code`` and
        ``message`` replace the status's usual ones."""
        with self._lock:
            self._fail_queue.extend([(status, code, message)] * n)

    def fail_where(self, which: Callable[[str, str], object] | None, status: int = 403) -> None:
        """Answer ``status`` (not forwarded) to every request for which ``which(method, target)``
        is true (a name, True), until ``fail_where(None)`` or :meth:`reset`; ``status`` 0: close
        the connection unanswered instead (S3 unreachable, for those requests only)."""
        with self._lock:
            self._fail_where = None if which is None else (which, status)

    def fail_parts_after(self, n: int, status: int = 500) -> None:
        """Pass the next ``n`` UploadParts; answer every later one ``status`` (until :meth:`reset`)."""
        with self._lock:
            self._parts_pass, self._parts_status = n, status

    def _take_part_failure(self, method: str, target: str, headers: list[tuple[str, str]]) -> int | None:
        """The status to fail this request with, when it is an UploadPart past fail_parts_after's."""
        if not is_upload_part(method, target, headers):
            return None
        with self._lock:
            if self._parts_pass is None:
                return None
            if self._parts_pass > 0:
                self._parts_pass -= 1
                return None
            return self._parts_status

    def drop_next(self, n: int = 1) -> None:
        """Close the client connection abruptly (no response) on the next ``n`` requests."""
        with self._lock:
            self._drop_count += n

    def flip_request(self, n: int = 1) -> None:
        """Change one byte of the body of each of the next ``n`` PUTs that have one."""
        with self._lock:
            self._flip_requests += n

    def flip_response(self, n: int = 1, status: int = 206) -> None:
        """Change one byte of the body of each of the next ``n`` GET answers with ``status``, to
        requests that come from now on (not one in flight now: a readahead let go meanwhile).

        206 by default: ranged reads' answers, never a listing's XML.
        """
        with self._lock:
            self._flip_responses += n
            self._flip_status = status
            self._flip_after = self.requests

    def flip_response_at(self, offset: int) -> None:
        """Change byte ``offset`` of the object in the next ranged GET answer (206) that holds it,
        to a request that comes from now on."""
        with self._lock:
            self._flip_offsets.append(offset)
            self._flip_after = self.requests

    def _take_flip_at(self, req: Request, content_range: str) -> int | None:
        """Where in this answer's body (``Content-Range``) to change a byte asked for by
        :meth:`flip_response_at`; None: nowhere."""
        found = re.match(r"bytes (\d+)-(\d+)/", content_range)
        if not found:
            return None
        first, last = int(found.group(1)), int(found.group(2))
        with self._lock:
            if req.arrived <= self._flip_after:
                return None
            for offset in self._flip_offsets:
                if first <= offset <= last:
                    self._flip_offsets.remove(offset)
                    self.flipped.append(("GET", req.target))
                    return offset - first
        return None

    def _take_flip(self, kind: str, req: Request) -> bool:
        with self._lock:
            left = self._flip_requests if kind == "request" else self._flip_responses
            if left <= 0 or (kind == "response" and req.arrived <= self._flip_after):
                return False
            if kind == "request":
                self._flip_requests -= 1
            else:
                self._flip_responses -= 1
            self.flipped.append((req.method, req.target))
            return True

    def error_in_200(self, n: int = 1, code: str = "InternalError") -> None:
        """Answer the next ``n`` copies and multipart completions with 200 and an ``<Error>`` body
        naming ``code``, as AWS may; they are not forwarded (nothing happened)."""
        with self._lock:
            self._errors_in_200.extend([code] * n)

    def _take_error_in_200(self, method: str, target: str, headers: list[tuple[str, str]]) -> str | None:
        if not is_copy_or_completion(method, target, headers):
            return None
        with self._lock:
            if not self._errors_in_200:
                return None
            self.errors_in_200 += 1
            return self._errors_in_200.pop(0)

    def delete_errors(self, n: int = 1, code: str = "InternalError") -> None:
        """Answer the next ``n`` DeleteObjects with 200 and a per-key ``<Error>`` of ``code`` for
        every key they name; they are not forwarded (nothing was deleted)."""
        with self._lock:
            self._delete_errors.extend([code] * n)

    def _take_delete_error(self, method: str, target: str) -> str | None:
        if not is_delete_objects(method, target):
            return None
        with self._lock:
            return self._delete_errors.pop(0) if self._delete_errors else None

    def hold_deletes(self) -> None:
        """Hold every DeleteObjects from now on (not forwarded) until :meth:`release`."""
        self._released.clear()

    def hold_until(self, held: Naming, freed: Naming, limit: float) -> None:
        """From now on a request for which ``held(method, target)`` gives a name is forwarded
        only once a request for which ``freed(method, target)`` gives that name has come (it is
        not held itself), or after ``limit`` seconds; :attr:`held_outcomes` records which."""
        with self._freed_cond:
            self._hold_until = (held, freed, limit)
            self._freed.clear()

    def _hold_or_free(self, method: str, target: str) -> None:
        """hold_until's part in serving one request."""
        with self._freed_cond:
            rule = self._hold_until
            if rule is None:
                return
            held, freed, limit = rule
            name = freed(method, target)
            if name is not None:
                self._freed.add(name)
                self._freed_cond.notify_all()
            name = held(method, target)
            if name is None:
                return
            came = self._freed_cond.wait_for(lambda: name in self._freed, limit)
            self.held_outcomes.append((name, "request" if came else "limit"))

    def release(self, forward: bool = False) -> None:
        """Let held DeleteObjects go: forwarded with ``forward``, else their connections closed
        (the client learns nothing; nothing was deleted)."""
        self._release_forwards = forward
        self._released.set()

    def hold_gets(self) -> None:
        """Hold every ranged GET from now on (not forwarded yet) until :meth:`release_gets`:
        ``holding_gets`` then lists (target, range) of the GETs a client has in flight at once."""
        self._gets_go.clear()

    def release_gets(self) -> None:
        """Forward the held ranged GETs, and every one after."""
        self._gets_go.set()

    def hang_up(self) -> None:
        """Close every client connection in order (a FIN, as a server's idle timeout closes
        kept-alive connections); the next requests come on new ones."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stall(self, seconds: float) -> None:
        """Delay every forwarded request by ``seconds`` (0 to stop stalling)."""
        self._stall = float(seconds)

    def stall_copies(self, seconds: float) -> None:
        """Delay every CopyObject and UploadPartCopy by ``seconds``, as a server that takes that
        long to copy (0 to stop)."""
        self._stall_copies = float(seconds)

    def reset(self) -> None:
        """Back to plain pass-through; counters are kept."""
        with self._lock:
            self.mode = "pass"
            self._fail_queue.clear()
            self._drop_count = 0
            self._parts_pass = None
            self._fail_where = None
            self._stall = self._stall_copies = 0.0
            self._flip_requests = self._flip_responses = 0
            self._flip_offsets.clear()
            self._errors_in_200.clear()

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Start the accept thread."""
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and close all client connections."""
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            self._abort(c)
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        """Start serving."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close everything."""
        self.close()

    # -- internals ------------------------------------------------------------
    def _accept_loop(self) -> None:
        """Accept connections, one handler thread each."""
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:  # noqa: UP041 (py39 target)
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _abort(conn: socket.socket) -> None:
        """Close a socket with an RST (SO_LINGER 0)."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            conn.close()
        except OSError:
            pass

    def _decide(self) -> tuple[str, int, str | None, str | None]:
        """Pick what to do with the next request: ('pass'|'fail'|'drop', status, code)."""
        with self._lock:
            self.requests += 1
            if self._fail_queue:
                status, code, message = self._fail_queue.pop(0)
                return "fail", status, code, message
            if self._drop_count > 0:
                self._drop_count -= 1
                return "drop", 0, None, None
            if self.mode == "fail":
                return "fail", self.fail_status, None, None
            if self.mode == "drop":
                return "drop", 0, None, None
            return "pass", 0, None, None

    def _serve(self, conn: socket.socket) -> None:
        """Handle every request of one client connection."""
        rfile = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                start, lines = _read_head(rfile)
                parts = start.decode("latin-1").split()
                if len(parts) != 3:
                    raise ValueError(f"bad request line {start!r}")
                method, target, version = parts
                headers = _parse_headers(lines)
                action, status, code, message = self._decide()
                failed_part = self._take_part_failure(method, target, headers) if action == "pass" else None
                if failed_part is not None:
                    action, status = "fail", failed_part
                with self._lock:
                    where = self._fail_where
                if action == "pass" and where is not None and where[0](method, target):
                    action, status = ("fail", where[1]) if where[1] else ("drop", 0)
                with self._lock:
                    arrived = self.requests
                    self.seen.append((method, target))
                    self.heard.append((method, target, {k.lower(): v for k, v in headers}))
                    self.heard_at.append((time.monotonic(), method, target))
                expect = any(
                    k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers
                )
                if action == "drop":
                    log.debug("faultproxy: dropping %s %s", method, target)
                    self._abort(conn)
                    return
                if action == "fail" and expect:
                    # Like S3: final error instead of 100 Continue, body never sent.
                    conn.sendall(s3_error_response(status, method, code, close=True, message=message))
                    return
                if expect:
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = self._read_body(rfile, headers)
                req = Request(method, target, version, headers, body, arrived)
                if action == "fail":
                    log.debug("faultproxy: failing %s %s with %d", method, target, status)
                    conn.sendall(s3_error_response(status, method, code, req.wants_close(), message))
                    if req.wants_close():
                        return
                    continue
                signed_for = signed_region(headers)
                if self.bucket_region and signed_for and signed_for != self.bucket_region:
                    with self._lock:
                        self.wrong_region += 1
                    close = req.wants_close()
                    conn.sendall(wrong_region_response(method, self.bucket_region, signed_for, close))
                    if req.wants_close():
                        return
                    continue
                error_code = self._take_error_in_200(method, target, headers)
                if error_code is not None:
                    conn.sendall(error_200_response(error_code, req.wants_close()))
                    if req.wants_close():
                        return
                    continue
                delete_error = self._take_delete_error(method, target)
                if delete_error is not None:
                    conn.sendall(delete_errors_response(body, delete_error, req.wants_close()))
                    if req.wants_close():
                        return
                    continue
                if is_delete_objects(method, target) and not self._released.is_set():
                    with self._lock:
                        self.holding += 1
                    while not self._released.wait(0.1):
                        if self._stop.is_set():
                            return
                    with self._lock:
                        self.holding -= 1
                    if not self._release_forwards:
                        self._abort(conn)
                        return
                self._hold_or_free(method, target)
                ranged = next((v for k, v in headers if k.lower() == "range"), None)
                if method == "GET" and ranged and not self._gets_go.is_set():
                    held = (target, ranged)
                    with self._lock:
                        self.holding_gets.append(held)
                    while not self._gets_go.wait(0.1):
                        if self._stop.is_set():
                            return
                    with self._lock:
                        self.holding_gets.remove(held)
                if self._stall > 0 and self._stop.wait(self._stall):
                    return
                copying = method == "PUT" and _header(headers, "x-amz-copy-source")
                if copying and self._stall_copies > 0 and self._stop.wait(self._stall_copies):
                    return
                if not self._forward(req, start, lines, conn) or req.wants_close():
                    return
        except (_Closed, OSError, ValueError) as exc:
            log.debug("faultproxy connection ended: %r", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _read_body(rfile: BinaryIO, headers: list[tuple[str, str]]) -> bytes:
        """Read a request body (Content-Length or chunked, raw bytes)."""
        if _is_chunked(headers):
            buf: list[bytes] = []
            _copy_chunked(rfile, buf.append)
            return b"".join(buf)
        length = _content_length(headers) or 0
        return _read_exact(rfile, length) if length else b""

    def _forward(self, req: Request, start: bytes, lines: list[bytes], conn: socket.socket) -> bool:
        """Send one request upstream and relay the response; False if conn must close."""
        kept = [
            ln for ln in lines if not ln.lower().startswith((b"expect:", b"connection:"))
        ]
        head = start + b"".join(kept) + b"Connection: close\r\n\r\n"
        with self._lock:
            self.forwarded += 1
        body = req.body
        if body and req.method == "PUT" and self._take_flip("request", req):
            body = _flipped(body)
        up = socket.create_connection(self.upstream, timeout=300)
        try:
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up.sendall(head + body)
            urf = up.makefile("rb")
            while True:
                status_line, resp_lines = _read_head(urf)
                status = int(status_line.split()[1])
                if 100 <= status < 200:  # interim response: relay and read the next one
                    conn.sendall(status_line + b"".join(resp_lines) + b"\r\n")
                    continue
                break
            resp_headers = _parse_headers(resp_lines)
            length = _content_length(resp_headers)
            chunked = _is_chunked(resp_headers)
            no_body = req.method == "HEAD" or status in (204, 304)
            until_eof = not no_body and not chunked and length is None
            # Our upstream connection is per request; tell the client what we do.
            out_lines = [ln for ln in resp_lines if not ln.lower().startswith(b"connection:")]
            keep = not until_eof
            out_lines.append(b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
            conn.sendall(status_line + b"".join(out_lines) + b"\r\n")
            if no_body:
                pass
            elif chunked:
                _copy_chunked(urf, conn.sendall)
            elif length and req.method == "GET" and status == self._flip_status and self._take_flip(
                "response", req
            ):
                conn.sendall(_flipped(_read_exact(urf, length)))
            elif (
                length
                and req.method == "GET"
                and status == 206
                and (at := self._take_flip_at(req, _header(resp_headers, "content-range"))) is not None
            ):
                conn.sendall(_flipped(_read_exact(urf, length), at))
            elif length is not None:
                _copy_exact(urf, length, conn)
            else:
                while True:
                    chunk = urf.read1(65536)  # type: ignore[attr-defined]
                    if not chunk:
                        break
                    conn.sendall(chunk)
            urf.close()
            return keep
        finally:
            up.close()
