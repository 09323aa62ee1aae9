"""Accept connections: a thread each up to the cap; over the cap, one thread answers probes.

Slow clients can fill every slot (each is held until its request deadline). The host's health
gate and probes must still get an answer then, so a connection over the cap is not refused at
once: a single selector thread reads its request head without blocking, answers GET /healthz
and /readyz (the probe callback) and gives anything else 503. That costs no thread per
connection, a probe is answered as soon as its head arrives however many slow clients wait,
and at most OVERFLOW connections wait there (the oldest is answered 503 to make room).
A reserved slot would not do: slow clients can take a reserved slot as easily as any other.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from edge_runtime.framing import JSON, MAX_CONNECTIONS, MAX_HEAD_BYTES, render

__all__ = ["Server", "ProbeDesk", "busy"]

log = logging.getLogger("edge_runtime")
OVERFLOW = 256  # connections over the cap waiting for their head at once
OVERFLOW_WAIT_S = 2.0  # how long one of them may take to send its head


def busy() -> bytes:
    """Return the 503 for a connection over the cap that is not a probe."""
    return render(503, b'{"error": "too many connections"}', JSON, {"Retry-After": "1"})


Probe = Callable[[str], "bytes | None"]  # path -> a whole response, or None: not a probe


class ProbeDesk:
    """One thread and a selector for the connections over the cap (see the module docstring)."""

    def __init__(self, probe: Probe, limit: int = OVERFLOW, wait_s: float = OVERFLOW_WAIT_S):
        self.probe, self.limit, self.wait_s = probe, limit, wait_s
        self.selector = selectors.DefaultSelector()
        self.waiting: OrderedDict[socket.socket, tuple[float, bytearray]] = OrderedDict()
        self.incoming: list[socket.socket] = []
        self.lock = threading.Lock()
        # a pipe, not a socketpair: the unit allows no AF_UNIX sockets
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="probe-desk", daemon=True)
        self.thread.start()

    def add(self, sock: socket.socket) -> None:
        """Take a connection over the cap (from the accept loop; never blocks)."""
        with self.lock:
            self.incoming.append(sock)
        self._wake()

    def close(self) -> None:
        """Stop the thread and close every connection still waiting."""
        self.closed = True
        self._wake()
        self.thread.join(5)

    def _wake(self) -> None:
        try:
            if self.wake_w >= 0:
                os.write(self.wake_w, b"x")
        except OSError:  # the pipe is full (the loop is awake anyway), or closed
            pass

    def _loop(self) -> None:
        try:
            while not self.closed:
                self._take_incoming()
                soonest = min((due for due, _ in self.waiting.values()), default=None)
                timeout = None if soonest is None else max(0.0, soonest - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    if key.fileobj == self.wake_r:
                        self._drain_wake()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock in [s for s, (due, _) in self.waiting.items() if due <= now]:
                    self._finish(sock, busy())
        except Exception:  # the desk must not take the process down; probes then queue
            log.exception("probe_desk_failed")
        finally:
            for sock in list(self.waiting):
                self._finish(sock, None)
            self.selector.close()
            wake_w, self.wake_w = self.wake_w, -1  # no later _wake writes into a reused fd
            os.close(self.wake_r)
            os.close(wake_w)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _take_incoming(self) -> None:
        with self.lock:
            incoming, self.incoming = self.incoming, []
        for sock in incoming:
            while len(self.waiting) >= self.limit:
                self._finish(next(iter(self.waiting)), busy())  # the oldest makes room
            try:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                sock.close()
                continue
            self.waiting[sock] = (time.monotonic() + self.wait_s, bytearray())

    def _read(self, sock: socket.socket) -> None:
        if sock not in self.waiting:
            return
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._finish(sock, None)
            return
        head = self.waiting[sock][1]
        head += chunk
        end = head.find(b"\n\r\n") if b"\n\r\n" in head else head.find(b"\n\n")
        if end >= 0 or len(head) > MAX_HEAD_BYTES:
            self._finish(sock, self._answer(bytes(head.split(b"\n", 1)[0])))

    def _answer(self, line: bytes) -> bytes:
        words = line.rstrip(b"\r").split(b" ")
        if len(words) == 3 and words[0] == b"GET" and words[2] in (b"HTTP/1.1", b"HTTP/1.0"):
            return self.probe(words[1].decode("latin-1").split("?", 1)[0]) or busy()
        return busy()

    def _finish(self, sock: socket.socket, answer: bytes | None) -> None:
        """Answer (one non-blocking send: a fresh socket's buffer takes it) and close."""
        self.waiting.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            if answer:
                sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()


class Server(socketserver.ThreadingTCPServer):
    """A daemon thread per connection (at most max_connections), a listen backlog for bursts;
    over the cap, a ProbeDesk answers probes when a probe callback is given, else 503."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = MAX_CONNECTIONS

    def __init__(self, address, handler, probe: Probe | None = None):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._probe = probe
        self._desk: ProbeDesk | None = None
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            if self._probe is not None:
                if self._desk is None:
                    self._desk = ProbeDesk(self._probe)
                self._desk.add(request)
                return
            try:
                request.sendall(busy())
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

    def server_close(self) -> None:
        super().server_close()
        if self._desk is not None:
            self._desk.close()
