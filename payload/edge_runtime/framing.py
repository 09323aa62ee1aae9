"""HTTP/1.1 framing: read one request within limits, write one response, cap the connections.

Hand-written instead of http.server, which parses headers with the email package (more memory
and time per request than this runtime can spare). This one reads the request line and headers
within strict limits, requires Content-Length for a body, keeps connections alive, answers every
response in one write with TCP_NODELAY, and gives each connection a timeout so a slow or idle
client only ever holds its own thread (and at most MAX_CONNECTIONS are served at once).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from typing import Any

__all__ = ["HttpHandler", "Server", "ProtocolError", "http_date", "LIMITS", "MAX_LINE",
           "MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_CONNECTIONS", "SOCKET_TIMEOUT_S", "JSON", "TEXT"]

log = logging.getLogger("edge_runtime")
SOCKET_TIMEOUT_S = 10.0
SERVER = b"edge_runtime/0.3"
MAX_LINE = 8192  # request line and each header line, bytes (without CRLF)
MAX_HEADERS = 64  # header lines per request
MAX_HEAD_BYTES = 32768  # request line + headers together
MAX_CONNECTIONS = 64  # connections served at once; more get 503 and are closed
LIMITS = {"max_line": MAX_LINE, "max_headers": MAX_HEADERS, "max_head_bytes": MAX_HEAD_BYTES,
          "max_connections": MAX_CONNECTIONS}
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}
JSON = b"application/json"
TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TOKEN_BAD = frozenset(b' \t"(),/:;<=>?@[\\]{}\x7f') | frozenset(range(0x20))
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


class ProtocolError(Exception):
    """The request cannot be parsed; answered with status and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HttpHandler(socketserver.BaseRequestHandler):
    """One connection: requests one after another (keep-alive) until close, error or timeout.

    A subclass answers each parsed request in respond(); command, path, headers and version
    describe it, and _body_of(length) reads its body.
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
        self.rfile = self.sock.makefile("rb", buffering=65536)

    def finish(self) -> None:
        try:
            self.rfile.close()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (TimeoutError, ConnectionError, OSError) as error:
            log.info("http_connection_dropped client=%s reason=%s", self.client_address[0],
                     type(error).__name__)

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
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request head not received in time")
        self.sock.settimeout(min(self.timeout, left))
        return self.rfile.readline(MAX_LINE + 3)

    def _read_head(self) -> bool:
        """Parse the request line and headers into command, path, headers; False on EOF/idle."""
        try:
            self.sock.settimeout(self.timeout)
            line = self.rfile.readline(MAX_LINE + 3)
            if line in (b"\r\n", b"\n"):  # one stray CRLF between requests is tolerated
                line = self.rfile.readline(MAX_LINE + 3)
        except (TimeoutError, ConnectionError):
            return False  # an idle keep-alive connection: close it quietly
        if not line:
            return False
        deadline = time.monotonic() + self.timeout  # the whole head, not each recv
        if len(line) > MAX_LINE + 2 or not line.endswith(b"\n"):
            raise ProtocolError(414 if len(line) > MAX_LINE + 2 else 400,
                                "Request line too long" if len(line) > MAX_LINE + 2
                                else "Bad request syntax (incomplete request line)")
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) != 3 or not all(words) or not words[1].startswith((b"/", b"*")) \
                or any(b in _TOKEN_BAD for b in words[0]):
            raise ProtocolError(400, f"Bad request syntax ({line[:80]!r})")
        method, target, version = words
        if not version.startswith(b"HTTP/") or version[5:] not in (b"1.1", b"1.0"):
            raise ProtocolError(505, f"Invalid HTTP version ({version[:20].decode('latin-1')})")
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
            if not colon or not name or any(b in _TOKEN_BAD for b in name):
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
        head = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                b"Content-Length: %d\r\n" % (status, REASONS.get(status, "Unknown").encode(),
                                             SERVER, http_date(), ctype, len(body))]
        for key, value in (headers or {}).items():
            head.append(f"{key}: {value}\r\n".encode("latin-1"))
        if not self.keep_alive:
            head.append(b"Connection: close\r\n")
        elif self.version == b"HTTP/1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        head.append(body)
        self.sock.sendall(b"".join(head))

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
        self.sock.settimeout(self.timeout)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.keep_alive = False
            raise ProtocolError(408, f"body not received within {self.timeout} s") from None
        if len(body) != length:
            self.keep_alive = False
            raise ProtocolError(400, f"body ended after {len(body)} of {length} bytes")
        self.body_pending = False
        return body


class Server(socketserver.ThreadingTCPServer):
    """A daemon thread per connection (at most MAX_CONNECTIONS), a listen backlog for bursts."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    max_connections = MAX_CONNECTIONS

    def __init__(self, address, handler):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nContent-Length: 35\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n{\"error\": \"too many connections\"}")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.exception("http_handler_failed client=%s", client_address[0])
