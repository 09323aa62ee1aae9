"""HTTP front of the Service: a small HTTP/1.1 server on socketserver, routes, JSON errors, token.

Hand-written instead of http.server: http.server parses headers with the email package (about
7 MiB of RSS and ~0.1 ms per request here). This one reads the request line and headers within
strict limits, requires Content-Length for a body, keeps connections alive, answers every
response in one write with TCP_NODELAY, and gives each connection a timeout so a slow or idle
client only ever holds its own thread (and at most MAX_CONNECTIONS are served at once).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import socketserver
import threading
import time

import numpy as np

from edge_runtime.service import Service, single_malloc_arena
from edge_runtime.validate import ApiError, check_length, check_token, parse_qa, parse_texts

__all__ = ["Service", "make_server", "serve", "Handler", "Server", "LIMITS"]

log = logging.getLogger("edge_runtime")
SOCKET_TIMEOUT_S = 10.0
OPEN_ROUTES = ("/healthz", "/readyz")  # the host's health gate and probes need no token
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
_date_cache = [0, b""]


def http_date(now: float | None = None) -> bytes:
    """Return the IMF-fixdate for now (cached per second, locale-independent)."""
    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        t = time.gmtime(second)
        _date_cache[:] = [second, (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} "
                                   f"{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                                   "GMT").encode()]
    return _date_cache[1]


def float32_json(rows) -> bytes:
    """Return a float32 matrix as a JSON array of arrays, 9 significant digits per number.

    9 digits give back every float32 exactly; json.dumps writes the 17 digits of the float64
    and takes 2.2x as long (204 vs 93 us for one 384-wide row, ~5% of a batch-1 call).
    """
    if not len(rows) or not np.isfinite(rows).all():  # NaN/inf: json.dumps writes NaN
        return json.dumps(rows.tolist()).encode()
    fmt = "%.9g".__mod__
    return ("[[" + "],[".join(",".join(map(fmt, row)) for row in rows.tolist()) + "]]").encode()


class ProtocolError(Exception):
    """The request cannot be parsed; answered with status and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(socketserver.BaseRequestHandler):
    """One connection: requests one after another (keep-alive) until close, error or timeout.

    Routes: GET /healthz /readyz /metrics /v1/info, POST /v1/embed /v1/classify /v1/qa (the
    one of the bundle's task answers, the others 409).
    """

    service: Service
    timeout: float = SOCKET_TIMEOUT_S

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
        handler = {"GET": self._get, "POST": self._post}.get(self.command)
        if handler is None:
            self._json(501, {"error": f"Unsupported method ({self.command!r})"})
            return False
        handler()
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
        headers, size = {}, len(line)
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
            name, colon, value = line.partition(b":")
            if not colon or not name or any(b in _TOKEN_BAD for b in name):
                raise ProtocolError(400, f"Bad header line ({line[:40]!r})")
            key, value = name.decode("ascii").lower(), value.strip().decode("latin-1")
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
    def _send(self, status: int, body: bytes, ctype: bytes, headers=None) -> None:
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

    def _json(self, status: int, payload: dict, headers=None) -> None:
        self._send(*self._json_answer(status, payload, headers))

    def _json_answer(self, status: int, payload: dict, headers=None) -> tuple:
        if status >= 400 and self.body_pending:
            self.keep_alive = False  # an unread request body must not leak into the next
        if status == 500:
            self.keep_alive = False
        return status, json.dumps(payload).encode(), JSON, headers

    def _dispatch(self, routes: dict) -> None:
        """Route, answer; the request is counted in metrics before the answer leaves, so a
        client that reads /metrics right after its answer sees its own request."""
        started, route = time.perf_counter(), self.path.split("?", 1)[0]
        try:
            action = routes.get(route)
            if action is None:
                route = "other"
                raise ApiError(404, f"no route {self.command} {self.path}")
            if route not in OPEN_ROUTES:
                check_token(self.headers.get("authorization"), self.service.config.token)
            payload = action()
            if isinstance(payload, str):
                answer = (200, payload.encode(), TEXT, None)
            elif isinstance(payload, bytes):
                answer = (200, payload, JSON, None)
            else:
                answer = self._json_answer(200, payload)
        except ApiError as error:
            answer = self._json_answer(error.status, {"error": str(error), **error.extra},
                                       error.headers)
        except (TimeoutError, ConnectionError):
            self.service.metrics.request(self.command, route, 500,
                                         time.perf_counter() - started)
            raise
        except Exception as error:
            log.exception("request_failed path=%s", self.path)
            answer = self._json_answer(500, {"error": f"internal error: {type(error).__name__}: "
                                                      f"{error}"})
        self.service.metrics.request(self.command, route, answer[0],
                                     time.perf_counter() - started)
        self._send(*answer)

    def _get(self) -> None:
        self._dispatch({"/healthz": lambda: {"status": "alive"}, "/readyz": self._readyz,
                        "/metrics": self._metrics, "/v1/info": self.service.info})

    def _post(self) -> None:
        self._dispatch({"/v1/embed": self._embed, "/v1/classify": self._classify,
                        "/v1/qa": self._qa})

    def _readyz(self) -> dict:
        service = self.service
        if not service.ready:
            state = "failed" if service.state == "failed" else "loading"
            raise ApiError(503, f"not ready: {service.status}", state=state)
        return {"status": "ready", "state": "ready", "detail": service.status,
                "throttle": service.guard.state}

    def _metrics(self) -> str:
        return self.service.metrics.render(self.service.gauges())

    def _read_body(self, length: int) -> bytes:
        if self.headers.get("expect", "").lower() == "100-continue" \
                and self.version == b"HTTP/1.1":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.sock.settimeout(self.timeout)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.keep_alive = False
            raise ApiError(408, f"body not received within {self.timeout} s") from None
        if len(body) != length:
            self.keep_alive = False
            raise ApiError(400, f"body ended after {len(body)} of {length} bytes")
        self.body_pending = False
        return body

    def _body(self) -> bytes:
        length = check_length(self.headers.get("content-length"),
                              self.service.config.limits.max_body_bytes)
        return self._read_body(length)

    def _embed(self) -> bytes:
        texts = parse_texts(self._body(), self.service.config.limits)
        started = time.perf_counter()
        embeddings = self.service.embed(texts)
        ms = (time.perf_counter() - started) * 1e3
        return b'{"embeddings": %s, "ms": %s}' % (float32_json(embeddings), repr(ms).encode())

    def _classify(self) -> dict:
        texts = parse_texts(self._body(), self.service.config.limits)
        started = time.perf_counter()
        results = self.service.infer("classify", texts)
        return {"results": results, "ms": (time.perf_counter() - started) * 1e3}

    def _qa(self) -> dict:
        question, context = parse_qa(self._body(), self.service.config.limits)
        started = time.perf_counter()
        answer = self.service.infer("qa", question, context)
        return {**answer, "ms": (time.perf_counter() - started) * 1e3}


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


def make_server(service: Service, host: str, port: int,
                timeout_s: float = SOCKET_TIMEOUT_S) -> Server:
    """Bind the HTTP server for a service (port 0 picks a free port)."""
    handler = type("BoundHandler", (Handler,), {"service": service, "timeout": timeout_s})
    return Server((host, port), handler)


POLL_S = 2.0  # the accept loop's wake-ups when idle (a stop pokes it awake: see _shut_down)


def _shut_down(server) -> None:
    """Stop `serve_forever` now: ask it to stop, then wake its select with a connection of ours."""
    done = threading.Thread(target=server.shutdown, daemon=True)
    done.start()
    host, port = server.server_address[:2]
    while done.is_alive():
        try:  # the loop accepts it, sees the stop request and returns (at most one poke a 50 ms)
            with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "") else host, port), timeout=1):
                pass
        except OSError:
            pass
        done.join(0.05)


def serve(service: Service, host: str, port: int) -> int:
    """Place the process, listen, load in the background, serve until SIGTERM or SIGINT."""
    single_malloc_arena()  # before any thread allocates
    service.place()
    server = make_server(service, host, port)
    log.info("listening host=%s port=%d", host, server.server_address[1])

    def stop(signum, _frame):
        log.info("stopping signal=%s", signal.Signals(signum).name)
        threading.Thread(target=_shut_down, args=(server,), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=service.start, name="loader", daemon=True).start()
    try:
        server.serve_forever(poll_interval=POLL_S)
    finally:
        server.server_close()
        service.guard.stop()
        log.info("stopped")
    return 0
