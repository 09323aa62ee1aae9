"""The HTTP front end under hostile clients: deadlines, the connection cap, odd bytes, 405, hang-ups."""

import json
import logging
import socket
import threading
import time

import pytest
from test_runtime_http import LIMITS, POST, embed, post, raw, read_response, request, serve  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def no_handler_errors(caplog) -> None:
    """Fail when the server logged an error or a traceback (a request escaped its answer)."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad][:5]


def dribble(sock, data: bytes, gap_s: float, bound_s: float) -> bytes:
    """Send data a byte at a time, gap_s apart, for at most bound_s; return what came back."""
    sock.setblocking(True)
    sock.settimeout(gap_s)
    stop = time.monotonic() + bound_s
    for byte in data:
        if time.monotonic() > stop:
            break
        try:
            sock.sendall(bytes([byte]))
            answer = sock.recv(4096)  # the server answered (or closed) while we dribbled
            return answer
        except TimeoutError:
            continue
        except OSError:
            return b""
    sock.settimeout(5)
    try:
        return sock.recv(4096)
    except OSError:
        return b""


@pytest.mark.parametrize("sent, dribbled", [
    pytest.param(POST + b"Content-Length: 50\r\n\r\n", b" " * 50, id="body"),
    pytest.param(b"", b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", id="head"),
])
def test_one_deadline_covers_head_and_body(serve, sent, dribbled):
    """A client that sends a byte every 0.2 s is cut off after the timeout, not kept forever."""
    _, port = serve(timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        answer = dribble(sock, dribbled, gap_s=0.2, bound_s=6.0)
        took = time.monotonic() - started
    assert took < 2.5, (took, answer[:60])
    assert answer == b"" or b" 408 " in answer.split(b"\r\n")[0]


def test_slow_clients_do_not_starve_readyz(serve, caplog):
    """200 sockets dribble heads and bodies; /healthz and /readyz still answer within 1 s."""
    _, port = serve(timeout_s=10.0)
    held = []
    try:
        for n in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(POST if n % 2 else b"GET /v1/info HTTP/1.1\r\n")
            held.append(sock)
        stop = threading.Event()

        def keep_dribbling():  # one byte per socket every 0.2 s, for at most 10 s
            deadline = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < deadline:
                for sock in held:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
                stop.wait(0.2)

        dribbler = threading.Thread(target=keep_dribbling, daemon=True)
        dribbler.start()
        time.sleep(0.5)  # the server has taken every connection it will
        for path in ("/readyz", "/healthz", "/readyz"):
            started = time.monotonic()
            status, _, body = raw(port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
                                  timeout=1.0)
            assert status == 200, (path, body)
            assert time.monotonic() - started < 1.0
        stop.set()
        dribbler.join(5)
    finally:
        for sock in held:
            sock.close()
    no_handler_errors(caplog)


ODD_BYTES = [  # (name, raw request, status, words in the error)
    ("non-ascii method", b"G\x80T /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, "request syntax"),
    ("latin-1 method", "GÉT /healthz HTTP/1.1\r\n\r\n".encode("latin-1"), 400, "request syntax"),
    ("non-ascii header name", b"GET /healthz HTTP/1.1\r\nX-\xffoo: 1\r\n\r\n", 400, "bad header"),
    ("utf-8 header name", "GET /healthz HTTP/1.1\r\nnäme: 1\r\n\r\n".encode(), 400, "bad header"),
    ("superscript length", POST + b"Content-Length: \xb2\r\n\r\n", 411, "content-length"),
    ("superscript in length", POST + b"Content-Length: 1\xb9\r\n\r\n", 411, "content-length"),
    ("utf-8 superscript", POST + "Content-Length: ²\r\n\r\n".encode(), 411, "content-length"),
    ("5000-digit length", POST + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 413, "larger than"),
    ("zero-padded length", POST + b"Content-Length: " + b"0" * 5000 + b"2\r\n\r\n{}", 400,
     "expected"),
    ("5000-digit integer", post(b'{"texts": ' + b"1" * 5000 + b"}"), 400, "not valid json"),
    ("5000-digit in list", post(b'{"texts": ["a"], "n": [' + b"7" * 5000 + b"]}"), 400,
     "not valid json"),
]


@pytest.mark.parametrize("name, data, status, words", ODD_BYTES, ids=[c[0] for c in ODD_BYTES])
def test_odd_bytes_are_4xx_not_tracebacks(serve, caplog, name, data, status, words):
    _, port = serve(limits={"max_body_bytes": 65536})
    got, headers, body = raw(port, data, timeout=5)
    assert (got, headers["content-type"]) == (status, "application/json"), (name, body)
    assert words in body["error"].lower(), (name, body)
    assert embed(port, ["still fine"])[0] == 200
    no_handler_errors(caplog)


METHODS = [  # (method, path, status, Allow)
    ("DELETE", "/v1/embed", 405, "POST"),
    ("PUT", "/v1/embed", 405, "POST"),
    ("GET", "/v1/embed", 405, "POST"),
    ("POST", "/healthz", 405, "GET"),
    ("PATCH", "/metrics", 405, "GET"),
    ("DELETE", "/nope", 404, None),
    ("BREW", "/v1/embed", 501, None),
]


@pytest.mark.parametrize("method, path, status, allow", METHODS,
                         ids=[f"{m} {p}" for m, p, _, _ in METHODS])
def test_known_method_on_a_route_is_405_with_allow(serve, method, path, status, allow):
    _, port = serve()
    got, headers, body = raw(port, f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert got == status, body
    assert headers.get("allow") == allow
    assert "error" in body


def test_a_hung_up_clients_queued_job_is_dropped(serve):
    """A job whose client closed the connection before the worker reached it never runs."""
    service, port = serve()
    gate, ran = threading.Event(), []
    real_run = service.worker.run

    def run(job):
        ran.append(job[1][0][0])
        gate.wait(10)
        return real_run(job)

    service.worker.run = run
    first = service.worker.submit(("embed", (["first"],)))
    deadline = time.monotonic() + 5
    while not service.worker.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    body = json.dumps({"texts": ["abandoned"]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(post(body))
        while service.worker.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert service.worker.depth == 2  # queued behind the first
    gate.set()  # the client has gone; the worker moves on
    assert first.result(10).shape[0] == 1
    assert embed(port, ["after"])[0] == 200
    assert ran == ["first", "after"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the abandoned request is counted as 499
        if 'route="/v1/embed",status="499"} 1' in request(port, "GET", "/metrics")[2]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no 499 counted for the abandoned request")



def test_probe_desk_needs_no_unix_sockets(monkeypatch):
    """The unit allows only AF_INET/AF_INET6 sockets: the desk over the cap must not need AF_UNIX."""
    from edge_runtime.listener import ProbeDesk

    real_socket = socket.socket

    def inet_only(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_UNIX:
            raise PermissionError("RestrictAddressFamilies: AF_UNIX refused")
        return real_socket(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", inet_only)
    monkeypatch.setattr(socket, "socketpair", lambda *a, **k: inet_only(socket.AF_UNIX))
    with real_socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        desk = ProbeDesk(lambda path: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                         if path == "/readyz" else None)
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as client:
                accepted, _ = listener.accept()
                desk.add(accepted)
                client.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            desk.close()
