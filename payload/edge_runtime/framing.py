"""HTTP/1.1 framing: read one request within limits and one deadline, write one response.

Hand-written instead of http.server, which parses headers with the email package (more memory
and time per request than this runtime can spare). This one reads the request line and headers
within strict limits (ASCII tokens only), requires Content-Length for a body, keeps connections
alive, answers every response in one write with TCP_NODELAY, and gives each request one
deadline from its first byte to the end of its body, so a client that dribbles bytes holds its
thread no longer than an idle one (listener.py caps how many threads there are).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import socketserver
import time
from typing import Any

__all__ = ["HttpHandler", "Reader", "ProtocolError", "render", "http_date", "LIMITS", "MAX_LINE",
           "MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_CONNECTIONS", "SOCKET_TIMEOUT_S", "JSON", "TEXT"]

log = logging.getLogger("edge_runtime")
SOCKET_TIMEOUT_S = 10.0
SERVER = b"edge_runtime/0.3"
MAX_LINE = 8192  # request line and each header line, bytes (without CRLF)
MAX_HEADERS = 64  # header lines per request
MAX_HEAD_BYTES = 32768  # request line + headers together
MAX_CONNECTIONS = 64  # connections served at once; over it only /healthz and /readyz answer
LIMITS = {"max_line": MAX_LINE, "max_headers": MAX_HEADERS, "max_head_bytes": MAX_HEAD_BYTES,
          "max_connections": MAX_CONNECTIONS}
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
           413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}
JSON = b"application/json"
TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_date_cache: list[Any] = [0, b""]

Answer = tuple[int, bytes, bytes, "dict | None"]  # status, body, content type, extra headers


def http_date(now: float | None = None) -> bytes:
    """Return the IMF-fixdate for now (cached per second, locale-independent)."""
    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        t = time.gmtime(second)
        _date_cache[:] = [second, (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} "
                                   f"{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                                   "GMT").encode()]
    return _date_cache[1]


def render(status: int, body: bytes, ctype: bytes, headers: dict | None = None,
           keep_alive: bool = False, version: bytes = b"HTTP/1.1") -> bytes:
    """Return a whole response: status line, headers, body."""
    head = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n" % (status, REASONS.get(status, "Unknown").encode(),
                                         SERVER, http_date(), ctype, len(body))]
    for key, value in (headers or {}).items():
        head.append(f"{key}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    elif version == b"HTTP/1.0":
        head.append(b"Connection: keep-alive\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


class ProtocolError(Exception):
    """The request cannot be parsed; answered with status and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Reader:
    """Buffered reads from a socket where every read is bounded by one deadline (monotonic).

    A per-recv timeout alone lets a client that sends a byte now and then hold a connection
    for ever; the deadline covers the whole request instead.
    """

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, bytearray()

    def _fill(self, deadline: float, what: str) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what} not received in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def wait(self, idle_s: float) -> bool:
        """Wait up to idle_s for the next request's first byte; False on EOF (TimeoutError when
        none came)."""
        return bool(self.buffer) or self._fill(time.monotonic() + idle_s, "request")

    def readline(self, limit: int, deadline: float) -> bytes:
        """Return bytes up to and including a LF, at most limit of them (fewer at EOF)."""
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self.buffer) >= limit or not self._fill(deadline, "request head"):
                return self._take(limit)

    def read(self, size: int, deadline: float) -> bytes:
        """Return size bytes (fewer at EOF)."""
        while len(self.buffer) < size and self._fill(deadline, "request body"):
            pass
        return self._take(size)


class HttpHandler(socketserver.BaseRequestHandler):
    """One connection: requests one after another (keep-alive) until close, error or timeout.

    A subclass answers each parsed request in respond(); command, path, headers and version
    describe it, and _read_body(length) reads its body.
    """

    timeout: float = SOCKET_TIMEOUT_S
    command: str
    path: str
    headers: dict[str, str]

    # -- connection -----------------------------------------------------------------------
    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.sock.settimeout(self.timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.reader = Reader(self.sock)
        self.deadline = time.monotonic() + self.timeout

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (TimeoutError, ConnectionError, OSError) as error:
            log.info("http_connection_dropped client=%s reason=%s", self.client_address[0],
                     type(error).__name__)

    def client_waiting(self) -> bool:
        """Return False once the client has closed its end (EOF or reset); never blocks.

        A half-close (shutdown of its sending side) reads the same as a hang-up, as nginx
        reads it: HTTP/1.1 clients wait for the answer with both sides open.
        """
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(0):
            return True
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def respond(self) -> None:
        """Answer the request just read (with _send); a subclass routes it."""
        raise NotImplementedError

    # -- one request ----------------------------------------------------------------------
    def _one(self) -> bool:
        """Read, route and answer one request; return False when the connection must close."""
        self.keep_alive, self.body_pending = False, False
        self.version = b"HTTP/1.1"
        try:
            if not self._read_head():
                return False  # clean close or idle timeout between requests
        except ProtocolError as error:
            self._json(error.status, {"error": str(error)})
            return False
        self.respond()
        return self.keep_alive

    def _readline(self, deadline: float) -> bytes:
        return self.reader.readline(MAX_LINE + 3, deadline)

    def _read_head(self) -> bool:
        """Parse the request line and headers into command, path, headers; False on EOF/idle."""
        try:
            if not self.reader.wait(self.timeout):
                return False
            # one deadline from the first byte for the whole request, head and body
            self.deadline = deadline = time.monotonic() + self.timeout
            line = self._readline(deadline)
            if line in (b"\r\n", b"\n"):  # one stray CRLF between requests is tolerated
                line = self._readline(deadline)
        except (TimeoutError, ConnectionError):
            return False  # an idle keep-alive connection or a stalled one: close it quietly
        if not line:
            return False
        if len(line) > MAX_LINE + 2 or not line.endswith(b"\n"):
            raise ProtocolError(414 if len(line) > MAX_LINE + 2 else 400,
                                "Request line too long" if len(line) > MAX_LINE + 2
                                else "Bad request syntax (incomplete request line)")
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) != 3 or not all(words) or not words[1].startswith((b"/", b"*")) \
                or not _TCHAR.issuperset(words[0]):
            raise ProtocolError(400, f"Bad request syntax ({line[:80]!r})")
        method, target, version = words
        if version[5:] not in (b"1.1", b"1.0"):  # 505 only for a well-formed other version
            well_formed = len(version) == 8 and version[:5] == b"HTTP/" and version[6:7] == b"." \
                and version[5:6].isdigit() and version[7:].isdigit()
            raise ProtocolError(505 if well_formed else 400,
                                f"Invalid HTTP version ({version[:20].decode('latin-1')})")
        self.version = version
        headers: dict[str, str] = {}
        size = len(line)
        while True:
            line = self._readline(deadline)
            size += len(line)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("client closed inside the request head")
            if len(line) > MAX_LINE + 2 or not line.endswith(b"\n"):
                raise ProtocolError(431, "Header line too long")
            if len(headers) >= MAX_HEADERS or size > MAX_HEAD_BYTES:
                raise ProtocolError(431, f"Too many headers (limit {MAX_HEADERS} lines, "
                                         f"{MAX_HEAD_BYTES} bytes)")
            name, colon, raw_value = line.partition(b":")
            if not colon or not name or not _TCHAR.issuperset(name):
                raise ProtocolError(400, f"Bad header line ({line[:40]!r})")
            key, value = name.decode("ascii").lower(), raw_value.strip().decode("latin-1")
            if key in headers:
                if key in ("content-length", "host", "transfer-encoding", "authorization"):
                    raise ProtocolError(400, f"Duplicate header {key}")
                value = f"{headers[key]}, {value}"
            headers[key] = value
        if "transfer-encoding" in headers:
            raise ProtocolError(411, "Content-Length required (Transfer-Encoding not supported)")
        self.command, self.path, self.headers = method.decode("ascii"), target.decode(
            "latin-1"), headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = ("close" not in connection) if version == b"HTTP/1.1" \
            else ("keep-alive" in connection)
        # a body we have not read poisons the connection: close after an early answer
        self.body_pending = method == b"POST" or headers.get("content-length", "0") != "0"
        if self.body_pending and method != b"POST":
            self.keep_alive = False  # only POST bodies are ever read
        return True

    # -- answers --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: bytes, headers: dict | None = None) -> None:
        """Send status line, headers and body in one write."""
        self.sock.sendall(render(status, body, ctype, headers, self.keep_alive, self.version))

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send(*self._json_answer(status, payload, headers))

    def _json_answer(self, status: int, payload: dict, headers: dict | None = None) -> Answer:
        if status >= 400 and self.body_pending:
            self.keep_alive = False  # an unread request body must not leak into the next
        if status == 500:
            self.keep_alive = False
        return status, json.dumps(payload).encode(), JSON, headers

    def _read_body(self, length: int) -> bytes:
        """Read exactly length body bytes (after 100 Continue when asked); ProtocolError 408 when
        it does not arrive in time, 400 when the client ends it early."""
        if self.headers.get("expect", "").lower() == "100-continue" \
                and self.version == b"HTTP/1.1":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = self.reader.read(length, self.deadline)
        except TimeoutError:
            self.keep_alive = False
            raise ProtocolError(408, f"body not received within {self.timeout} s") from None
        if len(body) != length:
            self.keep_alive = False
            raise ProtocolError(400, f"body ended after {len(body)} of {length} bytes")
        self.body_pending = False
        return body

