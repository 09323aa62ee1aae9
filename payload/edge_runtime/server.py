"""HTTP front of the Service: routes, JSON errors, bearer token, per-connection timeouts."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_runtime.service import Service
from edge_runtime.validate import ApiError, check_length, check_token, parse_texts

__all__ = ["Service", "make_server", "serve", "Handler"]

log = logging.getLogger("edge_runtime")
SOCKET_TIMEOUT_S = 10.0
OPEN_ROUTES = ("/healthz", "/readyz")  # the host's health gate and probes need no token


class Handler(BaseHTTPRequestHandler):
    """Routes: GET /healthz /readyz /metrics /v1/info, POST /v1/embed."""

    service: Service
    server_version = "edge_runtime/0.2"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S  # a slow or idle client loses its connection, nobody else waits
    disable_nagle_algorithm = True  # small answers leave at once, not after a delayed ACK

    def _send(self, status: int, body: bytes, ctype: str, headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")  # end_headers, sent with the body in one write
        self.wfile.write(b"".join(self._headers_buffer) + body)
        self._headers_buffer = []

    def _json(self, status: int, payload: dict, headers=None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _dispatch(self, routes: dict) -> None:
        started, route, status = time.perf_counter(), self.path.split("?", 1)[0], 500
        try:
            action = routes.get(route)
            if action is None:
                route = "other"
                raise ApiError(404, f"no route {self.command} {self.path}")
            if route not in OPEN_ROUTES:
                check_token(self.headers.get("Authorization"), self.service.config.token)
            status, payload = 200, action()
            if isinstance(payload, str):
                self._send(200, payload.encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._json(200, payload)
        except ApiError as error:
            status = error.status
            self.close_connection = True  # an unread request body must not leak into the next
            self._json(status, {"error": str(error), **error.extra}, error.headers)
        except Exception as error:
            log.exception("request_failed path=%s", self.path)
            self.close_connection = True
            self._json(500, {"error": f"internal error: {type(error).__name__}: {error}"})
        finally:
            self.service.metrics.request(self.command, route, status,
                                         time.perf_counter() - started)

    def do_GET(self) -> None:
        self._dispatch({"/healthz": lambda: {"status": "alive"}, "/readyz": self._readyz,
                        "/metrics": self._metrics, "/v1/info": self.service.info})

    def do_POST(self) -> None:
        self._dispatch({"/v1/embed": self._embed})

    def _readyz(self) -> dict:
        service = self.service
        if not service.ready:
            state = "failed" if service.state == "failed" else "loading"
            raise ApiError(503, f"not ready: {service.status}", state=state)
        return {"status": "ready", "state": "ready", "detail": service.status,
                "throttle": service.guard.state}

    def _metrics(self) -> str:
        return self.service.metrics.render(self.service.gauges())

    def _embed(self) -> dict:
        limits = self.service.config.limits
        length = check_length(self.headers.get("Content-Length"), limits.max_body_bytes)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise ApiError(408, f"body not received within {self.timeout} s") from None
        if len(body) != length:
            raise ApiError(400, f"body ended after {len(body)} of {length} bytes")
        texts = parse_texts(body, limits)
        started = time.perf_counter()
        embeddings = self.service.embed(texts)
        return {"embeddings": embeddings.tolist(), "ms": (time.perf_counter() - started) * 1e3}

    def send_error(self, code: int, message=None, explain=None) -> None:
        """Answer protocol errors (bad request line, unknown method) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsable request line: still send a status
            self.request_version = "HTTP/1.0"
        try:
            self._json(code, {"error": message or explain or "bad request"})
        except OSError:
            pass

    def handle_one_request(self) -> None:
        """Handle one request; a client that stalls or hangs up only ends its own connection."""
        try:
            super().handle_one_request()
        except (socket.timeout, ConnectionError) as error:
            log.info("http_connection_dropped client=%s reason=%s", self.client_address[0],
                     type(error).__name__)
            self.close_connection = True

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http %s %s", self.address_string(), fmt % args)

    def log_error(self, fmt: str, *args) -> None:
        log.info("http_error %s %s", self.address_string(), fmt % args)


class Server(ThreadingHTTPServer):
    """A thread per connection, daemon threads, a listen backlog for bursts."""

    daemon_threads = True
    request_queue_size = 64


def make_server(service: Service, host: str, port: int,
                timeout_s: float = SOCKET_TIMEOUT_S) -> Server:
    """Bind the HTTP server for a service (port 0 picks a free port)."""
    handler = type("BoundHandler", (Handler,), {"service": service, "timeout": timeout_s})
    return Server((host, port), handler)


def serve(service: Service, host: str, port: int) -> int:
    """Place the process, listen, load in the background, serve until SIGTERM or SIGINT."""
    service.place()
    server = make_server(service, host, port)
    log.info("listening host=%s port=%d", host, server.server_address[1])

    def stop(signum, _frame):
        log.info("stopping signal=%s", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=service.start, name="loader", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        service.guard.stop()
        log.info("stopped")
    return 0

