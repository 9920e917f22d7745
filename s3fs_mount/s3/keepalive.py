"""HTTP/1.1 exchanges whose bodies are in memory (or spans of a file), over kept-alive sockets of our own.

Most of the mount's requests carry no body or a small one and read their whole answer: a
HEAD before a file's mode is shown (one per file of an ``ls -l``), a DELETE, a listing page,
a small PUT. Through urllib3 and ``http.client`` a HEAD cost ~0.43 ms of CPU here against
0.19 ms for the same bytes through a bare ``http.client`` connection, most of it urllib3's
pool look-ups and ``http.client``'s header parsing through the ``email`` package
(bench/README.md "A transport of our own"). :class:`KeptAlivePool` sends such a request
as one ``sendall`` and reads the answer with a few ``recv`` calls and one split of its
head; what it cannot do (a proxy, a body streamed from a file, an answer read as a stream)
:class:`~s3fs_mount.s3.transport.Transport` sends through urllib3 as before.

Failures are raised as the urllib3 exceptions urllib3 raises for them, so the connector
maps them (``TransportError.wrap``) and retries them (the retry policy) exactly as before;
nothing here sends a request twice. A pooled socket the server has closed is found before
it is used (a peek, as urllib3 does), not by a failed request.

A body is never decoded: requests ask for ``Accept-Encoding: identity``, so a
``Content-Encoding`` on an answer is the object's own (S3 keeps it with the object), and
the bytes are what the object holds, as every other S3 client reads them.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3

log = logging.getLogger(__name__)

#: Bytes asked of the socket at a time.
RECV = 65536
#: Bytes of a :class:`FileSpan` read at a time where the kernel cannot send them (TLS).
FILE_CHUNK = 1 << 20


class FileSpan:
    """A request body that is ``length`` bytes of the open file ``fd`` from ``offset``.

    Sent by the kernel from the file (``sendfile``) without passing through Python, where the
    connection allows (plain http); else read in pieces. The file must hold those bytes
    until the exchange returns: one that ends early fails the request (``ProtocolError``:
    the connection is dropped, nothing short reaches the server as complete).
    """

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        """The bytes, read whole (OSError if the file ends before them)."""
        return b"".join(self.pieces(self.length))

    def pieces(self, size: int) -> Iterator[bytes]:
        """The bytes in pieces of up to ``size`` (OSError if the file ends before them)."""
        done = 0
        while done < self.length:
            piece = os.pread(self.fd, min(size, self.length - done), self.offset + done)
            if not piece:
                raise OSError(errno.EIO, "the file ended %d bytes short of the body" % (self.length - done))
            done += len(piece)
            yield piece

    def __repr__(self) -> str:
        return "<FileSpan fd %d, %d bytes at %d>" % (self.fd, self.length, self.offset)


def send_file_span(sock: socket.socket, span: FileSpan) -> None:
    """Send ``span`` on ``sock``: ``sendfile`` on a plain socket (waiting up to the socket's
    timeout for room, ``TimeoutError`` past it), the bytes through Python on a TLS one."""
    if isinstance(sock, ssl.SSLSocket):
        for piece in span.pieces(FILE_CHUNK):
            sock.sendall(piece)
        return
    offset, left = span.offset, span.length
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    timeout = sock.gettimeout()
    wait_ms = None if timeout is None else int(timeout * 1000)
    while left:
        try:
            sent = os.sendfile(sock.fileno(), span.fd, offset, left)
        except BlockingIOError:  # a socket with a timeout is non-blocking underneath
            if not poller.poll(wait_ms):
                raise TimeoutError("timed out") from None
            continue
        if not sent:
            raise OSError(errno.EIO, "the file ended %d bytes short of the body" % left)
        offset += sent
        left -= sent


#: Most bytes of a response's status line and headers (urllib3 allows about as many).
MAX_HEAD = 1 << 20
#: Statuses whose answers never have a body.
_NO_BODY = frozenset({204, 304})


class Headers(dict):  # type: ignore[type-arg]
    """A response's headers, looked up by name in any case (kept lower-cased); a header sent
    more than once holds its values joined by ``", "``, as urllib3 joins them."""

    __slots__ = ()

    def get(self, name: str, default: Any = None) -> Any:  # noqa: D102 - dict's
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class PooledSocket:
    """One connection: its socket, what tells whether it is readable, and bytes read past the
    last answer (none, in practice: answers are not pipelined)."""

    __slots__ = ("sock", "pending", "_poll")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def alive(self) -> bool:
        """Is this idle connection still open? One the server has closed (an idle timeout) is
        readable (its EOF), and is dropped before a request is sent on it."""
        try:
            return not self.pending and not self._poll.poll(0)
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class KeptAlivePool:
    """Kept-alive connections to the hosts of one endpoint, shared by all threads.

    :param scheme: ``http`` or ``https``.
    :param verify: False, True (the default CA bundle ``ca_bundle``) or a CA bundle's path
        (a file, or a directory of hashed certificates).
    :param ca_bundle: the bundle ``verify=True`` means (requests' ``DEFAULT_CA_BUNDLE_PATH``).
    :param timeout: seconds to connect (at most 10) and between bytes read.
    :param max_idle: idle connections kept per host (more are closed when given back).

    ::

        >>> pool = KeptAlivePool('http', False, '', 30.0, 32)
        >>> status, headers, body = pool.exchange('HEAD', '127.0.0.1', 8333, '/b/k', {'Host': ...}, None)
    """

    def __init__(
        self, scheme: str, verify: bool | str, ca_bundle: str, timeout: float, max_idle: int
    ) -> None:
        self.scheme = scheme
        self._timeout = timeout
        self._connect_timeout = min(timeout, 10.0)
        self._max_idle = max_idle
        self._tls: ssl.SSLContext | None = None
        if scheme == "https":
            self._tls = _tls_context(verify, ca_bundle)
        self._lock = threading.Lock()
        #: (host, port) -> idle connections, the last given back at the end. GUARDED_BY(_lock).
        self._idle: dict[tuple[str, int], list[PooledSocket]] = {}

    def exchange(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: Mapping[str, str],
        body: bytes | bytearray | memoryview | FileSpan | None,
        read_timeout: float | None = None,
    ) -> tuple[int, Headers, bytes]:
        """Send one request and read its whole answer: ``(status, headers, body)``.

        ``read_timeout``: seconds between bytes for this exchange (default: the pool's timeout).

        ``headers`` are sent as given (Host among them), with ``Content-Length`` added unless
        they have one: for a body, and for a PUT or POST without one (as ``http.client`` adds
        it). Raises urllib3's exceptions (``NewConnectionError``, ``ConnectTimeoutError``,
        ``ReadTimeoutError``, ``SSLError``, ``ProtocolError``); never sends a request twice.
        """
        head = self.request_head(method, target, headers, body)
        conn = self.take(host, port)
        keep = False
        wait = self._timeout if read_timeout is None else read_timeout
        try:
            try:
                if wait != self._timeout:
                    conn.sock.settimeout(wait)
                if body is None or not len(body):
                    conn.sock.sendall(head)
                elif isinstance(body, FileSpan):
                    conn.sock.sendall(head)
                    send_file_span(conn.sock, body)
                elif len(body) < 65536:
                    conn.sock.sendall(head + bytes(body))
                else:
                    conn.sock.sendall(head)
                    conn.sock.sendall(body)
                status, found, data, keep = self._read_answer(conn, method)
            except TimeoutError as exc:
                raise urllib3.exceptions.ReadTimeoutError(
                    None,
                    target,
                    "Read timed out. (read timeout=%s)" % wait,  # type: ignore[arg-type]
                ) from exc
            except ssl.SSLError as exc:
                raise urllib3.exceptions.SSLError(exc) from exc
            except OSError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from exc
        finally:
            if keep and wait != self._timeout:
                try:
                    conn.sock.settimeout(self._timeout)
                except OSError:
                    keep = False
            if keep:
                self.give_back(host, port, conn)
            else:
                conn.close()
        return status, found, data

    def clear(self) -> None:
        """Close every idle connection (the server may have restarted: all are dead)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- connections ----------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds to connect (at most 10) and between bytes read."""
        return self._timeout

    def take(self, host: str, port: int) -> PooledSocket:
        """An idle connection to ``host:port`` still open, else a new one (urllib3's exceptions
        for a failure to connect); :meth:`give_back` it when its answer was read whole."""
        while True:
            with self._lock:
                conns = self._idle.get((host, port))
                conn = conns.pop() if conns else None
            if conn is None:
                return self._connect(host, port)
            if conn.alive():
                return conn
            conn.close()

    def give_back(self, host: str, port: int, conn: PooledSocket) -> None:
        """A connection :meth:`take` gave, its last answer read whole (blocking, with the pool's
        timeout): kept for the next request, or closed if ``max_idle`` are kept already."""
        with self._lock:
            conns = self._idle.setdefault((host, port), [])
            if len(conns) < self._max_idle:
                conns.append(conn)
                return
        conn.close()

    def _connect(self, host: str, port: int) -> PooledSocket:
        """A new connection (TLS-wrapped for https), with urllib3's exceptions for its failures."""
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        except TimeoutError as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                None, "Connection to %s timed out. (connect timeout=%s)" % (host, self._connect_timeout)
            ) from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                None,
                "Failed to establish a new connection: %s" % exc,  # type: ignore[arg-type]
            ) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self._timeout)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            sock.close()
            raise urllib3.exceptions.SSLError(exc) from exc
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from exc
        return PooledSocket(sock)

    # -- the bytes --------------------------------------------------------------------------

    @staticmethod
    def request_head(
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | bytearray | memoryview | FileSpan | None,
    ) -> bytes:
        """The request line and headers, encoded; ValueError for a header that would end early."""
        lines = ["%s %s HTTP/1.1" % (method, target)]
        lines += ["%s: %s" % kv for kv in headers.items()]
        if "Content-Length" in headers or "content-length" in headers:
            pass  # the caller's (the connector writes it so)
        elif body is not None:
            lines.append("Content-Length: %d" % len(body))
        elif method in ("PUT", "POST"):
            lines.append("Content-Length: 0")
        lines.append("Accept-Encoding: identity\r\n\r\n")
        text = "\r\n".join(lines)
        ends = len(lines) + 1  # a CRLF between lines, two after the last: no CR or LF elsewhere
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text or " " in target:
            raise ValueError("invalid character in a header of %s %s" % (method, target))
        return text.encode("latin-1")

    def _read_answer(self, conn: PooledSocket, method: str) -> tuple[int, Headers, bytes, bool]:
        """(status, headers, body, may the connection be used again)."""
        data = conn.pending
        sock = conn.sock
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(data) > MAX_HEAD:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", "response head too long")
            more = sock.recv(RECV)
            if not more:
                raise urllib3.exceptions.ProtocolError(
                    "Connection aborted.", "Remote end closed connection without response"
                )
            data += more
        status, found, keep = parse_head(data[:end])
        rest = data[end + 4 :]
        if 100 <= status < 200 and status != 101:  # a Continue, Early Hints: the answer follows
            conn.pending = rest
            return self._read_answer(conn, method)
        if method == "HEAD" or status in _NO_BODY or status == 101:
            body = b""
        elif "chunked" in found.get("transfer-encoding", "").lower():
            body, rest = _read_chunked(sock, rest)
        else:
            length = found.get("content-length")
            if length is None:
                body, rest, keep = _read_to_end(sock, rest), b"", False
            else:
                try:
                    size = int(length)
                except ValueError:
                    raise _broken("bad Content-Length %r" % length) from None
                body, rest = _read_exact(sock, rest, size)
        conn.pending = rest
        return status, found, body, keep  # never decoded: see the module's docstring


def parse_head(head: bytes) -> tuple[int, Headers, bool]:
    """An answer's status line and headers (``head``: up to its blank line, not included):
    ``(status, headers, may the connection be used again)``; ProtocolError if it makes no sense."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    try:
        version, code = status_line.split(" ", 2)[:2]
        status = int(code)
    except ValueError:
        raise _broken("bad status line %r" % status_line) from None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip()
        if name in fields:
            value = "%s, %s" % (fields[name], value)
        fields[name] = value
    keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
    return status, Headers(fields), keep


def _broken(reason: str) -> urllib3.exceptions.ProtocolError:
    """The exception urllib3 raises for an answer that broke off or makes no sense."""
    return urllib3.exceptions.ProtocolError("Connection broken: %s" % reason, reason)


def _read_exact(sock: socket.socket, data: bytes, size: int) -> tuple[bytes, bytes]:
    """``size`` bytes of a body (``data`` first): (body, what came after it)."""
    if len(data) >= size:
        return data[:size], data[size:]
    buf = bytearray(size)
    view = memoryview(buf)
    got = len(data)
    view[:got] = data
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise urllib3.exceptions.ProtocolError(
                "Connection broken: IncompleteRead(%d bytes read, %d more expected)" % (got, size - got),
                "IncompleteRead",
            )
        got += n
    return bytes(buf), b""


def _read_line(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    while True:
        end = data.find(b"\r\n")
        if end >= 0:
            return data[:end], data[end + 2 :]
        if len(data) > 65536:
            raise _broken("chunk line too long")
        more = sock.recv(RECV)
        if not more:
            raise _broken("closed in a chunked body")
        data += more


def _read_chunked(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    """A chunked body (``data`` first): (body, what came after it)."""
    parts = []
    while True:
        line, data = _read_line(sock, data)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _broken("bad chunk length %r" % line) from None
        if size == 0:
            while True:  # trailers, up to the empty line
                line, data = _read_line(sock, data)
                if not line:
                    return b"".join(parts), data
        chunk, data = _read_exact(sock, data, size + 2)
        parts.append(chunk[:size])


def _read_to_end(sock: socket.socket, data: bytes) -> bytes:
    """A body with no length: everything until the server closes."""
    parts = [data]
    while True:
        more = sock.recv(RECV)
        if not more:
            return b"".join(parts)
        parts.append(more)


def _tls_context(verify: bool | str, ca_bundle: str) -> ssl.SSLContext:
    """The TLS settings urllib3 is given: the server's certificate checked against ``verify``'s
    bundle (``ca_bundle`` for True) and its name, or nothing checked for False."""
    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    bundle = ca_bundle if verify is True else verify
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)
