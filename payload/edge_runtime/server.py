"""HTTP service: load the model once, gate readiness on the selftest, embed under one lock."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_runtime.model import load
from edge_runtime.selftest import selftest

__all__ = ["Service", "make_server", "serve", "MAX_BODY_BYTES", "MAX_TEXTS"]

log = logging.getLogger("edge_runtime")
MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 256


class Service:
    """The model, its readiness state and the lock every inference takes."""

    def __init__(self, bundle_dir, threads=None, max_seq_len=None):
        self.bundle_dir, self.threads, self.max_seq_len = bundle_dir, threads, max_seq_len
        self.model = None
        self.ready = False
        self.status = "loading"
        self.lock = threading.Lock()

    def start(self) -> None:
        """Load the bundle and run the selftest; set ready only if it passed."""
        try:
            started = time.perf_counter()
            self.model = load(self.bundle_dir, threads=self.threads, max_seq_len=self.max_seq_len)
            log.info("model_loaded bundle=%s seconds=%.3f", self.bundle_dir,
                     time.perf_counter() - started)
            with self.lock:
                result = selftest(self.model)
            self.ready, self.status = result.passed, result.reason
            log.log(logging.INFO if result.passed else logging.ERROR,
                    "selftest passed=%s min_seen=%.6f %s", result.passed,
                    min(result.cosines, default=0.0), result.reason)
        except Exception as error:  # the service stays up, not ready, and says why
            self.status = f"load failed: {error}"
            log.error("load_failed error=%s", error)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed texts under the inference lock."""
        with self.lock:
            return self.model.embed(texts).tolist()


class ApiError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


def _texts(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"body is not valid JSON: {error}") from None
    texts = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, 'expected {"texts": [string, ...]}')
    if not 1 <= len(texts) <= MAX_TEXTS:
        raise ApiError(400, f"texts must hold 1..{MAX_TEXTS} strings, got {len(texts)}")
    return texts


class Handler(BaseHTTPRequestHandler):
    """Routes: GET /healthz, GET /readyz, POST /v1/embed."""

    service: Service
    server_version = "edge_runtime/0.1"
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, routes: dict) -> None:
        try:
            action = routes.get(self.path.split("?", 1)[0])
            if action is None:
                raise ApiError(404, f"no route {self.command} {self.path}")
            self._send(200, action())
        except ApiError as error:
            self.close_connection = True  # an unread request body must not leak into the next
            self._send(error.status, {"error": str(error), **error.extra})
        except Exception as error:
            log.exception("request_failed path=%s", self.path)
            self._send(500, {"error": f"internal error: {error}"})

    def do_GET(self) -> None:
        self._dispatch({"/healthz": lambda: {"status": "alive"}, "/readyz": self._readyz})

    def do_POST(self) -> None:
        self._dispatch({"/v1/embed": self._embed})

    def _readyz(self) -> dict:
        if not self.service.ready:
            state = "loading" if self.service.status == "loading" else "failed"
            raise ApiError(503, f"not ready: {self.service.status}", state=state)
        return {"status": "ready", "detail": self.service.status}

    def _embed(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "Content-Length required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        texts = _texts(self.rfile.read(int(length)))
        if self.service.model is None:
            raise ApiError(503, f"model not loaded: {self.service.status}")
        started = time.perf_counter()
        embeddings = self.service.embed(texts)
        return {"embeddings": embeddings, "ms": (time.perf_counter() - started) * 1000.0}

    def log_message(self, fmt: str, *args) -> None:
        log.info("http %s %s", self.address_string(), fmt % args)


def make_server(service: Service, host: str, port: int) -> ThreadingHTTPServer:
    """Bind the HTTP server for a service (port 0 picks a free port)."""
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(service: Service, host: str, port: int) -> int:
    """Listen, load the model in the background, serve until SIGTERM or SIGINT."""
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
        log.info("stopped")
    return 0
