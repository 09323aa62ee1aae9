"""HTTP front of the Service: routes, their JSON, the token; framing lives in framing.py."""

from __future__ import annotations

import functools
import json
import logging
import signal
import socket
import threading
import time

import numpy as np

from edge_runtime.framing import (
    JSON,
    LIMITS,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_LINE,
    SOCKET_TIMEOUT_S,
    TEXT,
    Answer,
    HttpHandler,
    ProtocolError,
    render,
)
from edge_runtime.listener import Server
from edge_runtime.service import Service, single_malloc_arena
from edge_runtime.validate import ApiError, check_length, check_token, parse_qa, parse_texts
from edge_runtime.worker import Abandoned

__all__ = ["Service", "make_server", "serve", "Handler", "Server", "LIMITS", "float32_json",
           "MAX_LINE", "MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_CONNECTIONS"]

log = logging.getLogger("edge_runtime")
OPEN_ROUTES = ("/healthz", "/readyz")  # the host's health gate and probes need no token
ROUTES = {"/healthz": ("GET", "_healthz"), "/readyz": ("GET", "_readyz"),
          "/metrics": ("GET", "_metrics"), "/v1/info": ("GET", "_info"),
          "/v1/embed": ("POST", "_embed"), "/v1/classify": ("POST", "_classify"),
          "/v1/qa": ("POST", "_qa")}  # route: (its one method, the Handler method answering it)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                           "PATCH"})  # a known one on a route is 405, any other method 501


def float32_json(rows) -> bytes:
    """Return a float32 matrix as a JSON array of arrays, 9 significant digits per number.

    9 digits give back every float32 exactly; json.dumps writes the 17 digits of the float64
    and takes longer. A row is formatted by one %-operation on a format string made once per
    width, not by one call per number (benchmarks/RESULTS.md).
    """
    if not len(rows) or not np.isfinite(rows).all():  # NaN/inf: json.dumps writes NaN
        return json.dumps(rows.tolist()).encode()
    fmt = _row_format(rows.shape[1])
    return ("[[" + "],[".join(fmt % tuple(row) for row in rows.tolist()) + "]]").encode()


@functools.lru_cache(maxsize=8)
def _row_format(width: int) -> str:
    return ",".join(["%.9g"] * width)


def readiness(service: Service) -> dict:
    """Return /readyz's answer: 200 only while the service takes inference, else ApiError 503
    with the state and the reason (loading, failed, too_hot, overloaded; Service.serving)."""
    state, reason = service.serving()
    if state != "ready":
        raise ApiError(503, f"not ready: {reason}", state=state, reason=reason)
    return {"status": "ready", "state": "ready", "detail": reason, "reason": reason,
            "throttle": service.guard.state}


def probe_answer(service: Service, path: str) -> bytes | None:
    """Answer GET /healthz or /readyz outside a connection slot (None for any other path)."""
    started = time.perf_counter()
    if path == "/healthz":
        status, payload = 200, {"status": "alive"}
    elif path == "/readyz":
        try:
            status, payload = 200, readiness(service)
        except ApiError as error:
            status, payload = error.status, {"error": str(error), **error.extra}
    else:
        return None
    service.metrics.request("GET", path, status, time.perf_counter() - started)
    return render(status, json.dumps(payload).encode(), JSON)


class Handler(HttpHandler):
    """Routes: GET /healthz /readyz /metrics /v1/info, POST /v1/embed /v1/classify /v1/qa (the
    one of the bundle's task answers, the others 409)."""

    service: Service

    def respond(self) -> None:
        if self.command not in KNOWN_METHODS:
            self._json(501, {"error": f"Unsupported method ({self.command!r})"})
            self.keep_alive = False
            return
        self._dispatch()

    def _dispatch(self) -> None:
        """Route, answer; the request is counted in metrics before the answer leaves, so a
        client that reads /metrics right after its answer sees its own request."""
        started, route = time.perf_counter(), self.path.split("?", 1)[0]
        answer: Answer
        try:
            if route not in ROUTES:
                route = "other"
                raise ApiError(404, f"no route {self.command} {self.path}")
            method, name = ROUTES[route]
            if self.command != method:
                raise ApiError(405, f"{self.command} not allowed on {route} (only {method})",
                               headers={"Allow": method})
            if route not in OPEN_ROUTES:
                check_token(self.headers.get("authorization"), self.service.config.token)
            payload = getattr(self, name)()
            if isinstance(payload, str):
                answer = (200, payload.encode(), TEXT, None)
            elif isinstance(payload, bytes):
                answer = (200, payload, JSON, None)
            else:
                answer = self._json_answer(200, payload)
        except ApiError as error:
            answer = self._json_answer(error.status, {"error": str(error), **error.extra},
                                       error.headers)
        except ProtocolError as error:  # the body did not arrive
            answer = self._json_answer(error.status, {"error": str(error)})
        except (TimeoutError, ConnectionError) as error:
            gone = 499 if isinstance(error, Abandoned) else 500  # 499: nginx's "client gone"
            self.service.metrics.request(self.command, route, gone, time.perf_counter() - started)
            raise
        except Exception as error:
            log.exception("request_failed path=%s", self.path)
            answer = self._json_answer(500, {"error": f"internal error: {type(error).__name__}: "
                                                      f"{error}"})
        self.service.metrics.request(self.command, route, answer[0],
                                     time.perf_counter() - started)
        self._send(*answer)

    def _healthz(self) -> dict:
        return {"status": "alive"}

    def _readyz(self) -> dict:
        return readiness(self.service)

    def _metrics(self) -> str:
        return self.service.metrics.render(self.service.gauges())

    def _info(self) -> dict:
        return self.service.info()

    def _body(self) -> bytes:
        length = check_length(self.headers.get("content-length"),
                              self.service.config.limits.max_body_bytes)
        return self._read_body(length)

    def _embed(self) -> bytes:
        texts = parse_texts(self._body(), self.service.config.limits)
        started = time.perf_counter()
        embeddings = self.service.embed(texts, wanted=self.client_waiting)
        ms = (time.perf_counter() - started) * 1e3
        return b'{"embeddings": %s, "ms": %s}' % (float32_json(embeddings), repr(ms).encode())

    def _classify(self) -> dict:
        texts = parse_texts(self._body(), self.service.config.limits)
        started = time.perf_counter()
        results = self.service.infer("classify", texts, wanted=self.client_waiting)
        return {"results": results, "ms": (time.perf_counter() - started) * 1e3}

    def _qa(self) -> dict:
        question, context = parse_qa(self._body(), self.service.config.limits)
        started = time.perf_counter()
        answer = self.service.infer("qa", question, context, wanted=self.client_waiting)
        return {**answer, "ms": (time.perf_counter() - started) * 1e3}


def make_server(service: Service, host: str, port: int,
                timeout_s: float = SOCKET_TIMEOUT_S) -> Server:
    """Bind the HTTP server for a service (port 0 picks a free port)."""
    handler = type("BoundHandler", (Handler,), {"service": service, "timeout": timeout_s})
    return Server((host, port), handler, probe=functools.partial(probe_answer, service))


POLL_S = 2.0  # the accept loop's wake-ups when idle (a stop pokes it awake: see _shut_down)


def _shut_down(server) -> None:
    """Stop `serve_forever` now: ask it to stop, then wake its select with a connection of ours."""
    done = threading.Thread(target=server.shutdown, daemon=True)
    done.start()
    host, port = server.server_address[:2]
    while done.is_alive():
        try:  # the loop accepts it, sees the stop request and returns (at most one poke a 50 ms)
            with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "") else host, port),
                                          timeout=1):
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
