"""The HTTP service in-process on 127.0.0.1: bad input, token, thermal 503, queue, load."""

import hashlib
import json
import socket
import threading
import time

import pytest
from edge_runtime.config import parse_config
from edge_runtime.server import Service, make_server

pytestmark = pytest.mark.timeout(120)


def raw(port, data: bytes, timeout=10.0, shut=False):
    """Send bytes on a fresh connection; return (status, headers, parsed JSON or text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                break
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    text = body.decode()
    parsed = json.loads(text) if headers.get("content-type") == "application/json" else text
    return int(lines[0].split()[1]), headers, parsed


def request(port, method, path, body=b"", headers=None):
    """Send one well-formed HTTP/1.1 request (Connection: close)."""
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST" and "Content-Length" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def embed(port, texts, headers=None):
    return request(port, "POST", "/v1/embed", json.dumps({"texts": texts}), headers)


@pytest.fixture
def serve(tiny_bundle, fake_sysfs):
    """Start a Service + server on a free port with runtime.yaml overrides; yield a factory."""
    running = []

    def start(timeout_s=10.0, bundle=None, **overrides):
        config = parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 1,
                               "thermal": {"soft_c": 75.0, "hard_c": 85.0, "poll_s": 0.5},
                               **overrides})
        service = Service(bundle or tiny_bundle, config)
        service.start(poll=False)  # tests drive the thermal guard with tick()
        assert service.ready, service.status
        server = make_server(service, "127.0.0.1", 0, timeout_s=timeout_s)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        running.append(server)
        return service, server.server_address[1]

    yield start
    for server in running:
        server.shutdown()
        server.server_close()


LIMITS = {"limits": {"max_body_bytes": 4096, "max_texts": 4, "max_text_chars": 50,
                     "queue_depth": 4}}
POST = b"POST /v1/embed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"


def post(body: bytes) -> bytes:
    """Return a raw POST /v1/embed with a correct Content-Length."""
    return POST + b"Content-Length: %d\r\n\r\n" % len(body) + body


BAD_INPUT = [  # (name, raw request, status, words in the error)
    ("not json", post(b"{not json"), 400, "not valid JSON"),
    ("invalid utf-8", post(b'{"texts":["\xff"]}'), 400, "UTF-8"),
    ("top-level list", post(b'["x"]'), 400, "expected"),
    ("texts a string", post(b'{"texts":"x"}'), 400, "expected"),
    ("texts numbers", post(b'{"texts":[1]}'), 400, "expected"),
    ("texts empty", post(b'{"texts":[]}'), 400, "got 0"),
    ("lone surrogate", post(b'{"texts":["\\ud800"]}'), 400,
     "surrogate"),
    ("too many texts", post(b'{"texts":["a","b","c","d","e"]}'),
     413, "1..4 strings, got 5"),
    ("text too long", post(b'{"texts":["' + b"x" * 53 + b'"]}'),
     413, "longer than 50"),
    ("body too large", POST + b"Content-Length: 5000\r\n\r\n{}", 413, "larger than 4096"),
    ("no length", POST + b"\r\n", 411, "Content-Length required"),
    ("length not a number", POST + b"Content-Length: ten\r\n\r\n", 411, "Content-Length"),
    ("deep nesting", post(b"[" * 3000), 400, "not valid JSON"),
    ("unknown route", b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404, "no route"),
    ("unknown method", b"BREW /v1/embed HTTP/1.1\r\nHost: t\r\n\r\n", 501, "Unsupported method"),
    ("wrong method", b"PUT /v1/embed HTTP/1.1\r\nHost: t\r\n\r\n", 405, "not allowed"),
    ("garbage request line", b"\x00\x01garbage\r\n\r\n", 400, "request"),
    ("bad http version", b"GET / HTTP/9.9\r\n\r\n", 505, "version"),
]


def test_bad_input_each_case_then_still_serving(serve):
    _, port = serve(**LIMITS)
    for name, data, status, words in BAD_INPUT:
        got, headers, body = raw(port, data)
        assert (got, headers["content-type"]) == (status, "application/json"), name
        assert words.lower() in body["error"].lower(), (name, body)
    # a body shorter than declared, then the client half-closes
    got, _, body = raw(port, POST + b"Content-Length: 100\r\n\r\n{\"te", shut=True)
    assert got == 400 and "ended after 4 of 100" in body["error"]
    assert embed(port, ["still fine"])[0] == 200
    assert request(port, "GET", "/healthz")[0] == 200


def test_slow_client_does_not_block_others(serve):
    _, port = serve(timeout_s=0.5)
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /v1/embed HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")  # then stalls
    idle = socket.create_connection(("127.0.0.1", port))  # sends nothing at all
    started = time.monotonic()
    assert embed(port, ["meanwhile"])[0] == 200
    assert time.monotonic() - started < 0.5
    slow.settimeout(5)
    assert b" 408 " in slow.recv(4096)  # the stalled body times out with a JSON 408
    idle.settimeout(5)
    assert idle.recv(4096) == b""  # the idle connection is closed by the server
    slow.close()
    idle.close()


def test_token_required_except_probes(serve):
    _, port = serve(host="0.0.0.0", token="s3cret")
    assert embed(port, ["x"])[0] == 401
    assert embed(port, ["x"], {"Authorization": "Bearer wrong"})[0] == 401
    status, headers, _ = request(port, "GET", "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert embed(port, ["x"], {"Authorization": "Bearer s3cret"})[0] == 200
    assert request(port, "GET", "/v1/info", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert request(port, "GET", "/healthz")[0] == 200
    assert request(port, "GET", "/readyz")[0] == 200


def test_thermal_soft_hard_503_then_recovery(serve, fake_sysfs):
    service, port = serve()
    steps = [(45.0, "ok", 200), (80.0, "soft", 200), (90.0, "hard", 503), (80.0, "hard", 503),
             (70.0, "ok", 200)]
    for temp, state, status in steps:
        fake_sysfs.zone(0, temp)
        assert service.guard.tick() == state
        got, headers, body = embed(port, ["warm"])
        assert got == status, temp
        if status == 503:
            assert body["throttle"] == "hard" and int(headers["retry-after"]) >= 1
        metrics = request(port, "GET", "/metrics")[2]
        assert f'edge_throttle_state{{state="{state}"}} 1' in metrics
        assert f'edge_temperature_celsius{{zone="thermal_zone0",type="cpu-thermal"}} {temp}' \
            in metrics
    fake_sysfs.zone(0, 80.0)
    service.guard.tick()
    assert service._spacing(0.01) == 0.01  # soft: idle as long as the inference took


def fill_the_queue(service):
    """Hold the worker on one job with a second one queued (queue_depth 1): the queue is full
    until the returned gate is set. Returns (gate, the running job, the queued job)."""
    gate = threading.Event()
    real_run = service.worker.run
    service.worker.run = lambda texts: (gate.wait(10), real_run(texts))[1]
    running = service.worker.submit(("embed", (["a"],)))
    while not service.worker.busy:
        time.sleep(0.001)
    queued = service.worker.submit(("embed", (["b"],)))
    return gate, running, queued


def test_queue_full_gives_503(serve):
    service, port = serve(limits={"queue_depth": 1})
    gate, running, queued = fill_the_queue(service)
    status, headers, body = embed(port, ["c"])
    assert status == 503 and "queue full" in body["error"] and headers["retry-after"] == "1"
    assert 'edge_queue_depth 2' in request(port, "GET", "/metrics")[2]
    gate.set()
    assert running.result(10).shape[0] == queued.result(10).shape[0] == 1
    assert embed(port, ["d"])[0] == 200


def test_info_and_governor_drift(serve, fake_sysfs):
    fake_sysfs.policy(1, cpus="1", governor="powersave")
    service, port = serve()
    status, _, info = request(port, "GET", "/v1/info")
    assert status == 200 and info["state"] == "ready" and info["threads"] == 1
    assert info["bundle"] and info["release"] is None
    assert info["bundle_id"] == hashlib.sha256(open(f"{service.bundle_dir}/bundle.json", "rb").read()).hexdigest()[:12]
    assert info["governor"]["drift"] == ["policy1"]
    assert info["governor"]["policies"]["policy0"]["governor"] == "performance"
    assert info["temperatures"]["thermal_zone0"] == {"type": "cpu-thermal", "temp_c": 45.0}
    assert info["throttle"]["state"] == "ok"
    metrics = request(port, "GET", "/metrics")[2]
    assert 'edge_governor_drift{policy="policy1",governor="powersave",wanted="performance"} 1' \
        in metrics
    assert 'edge_governor_drift{policy="policy0",governor="performance",wanted="performance"} 0' \
        in metrics


def test_release_id_from_path(tmp_path, tiny_bundle):
    import shutil

    from edge_runtime.service import release_id

    bundle = shutil.copytree(tiny_bundle, tmp_path / "releases" / "20261125-abc123" / "bundle")
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "20261125-abc123")
    assert release_id(tmp_path / "current" / "bundle") == "20261125-abc123"
    assert release_id(bundle) == "20261125-abc123"
    assert release_id(tiny_bundle) is None


def test_concurrent_load_on_loopback(serve):
    _, port = serve()
    results, clients, per_client = [], 4, 12

    def client(index):
        for n in range(per_client):
            results.append(embed(port, [f"client {index} request {n}"])[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * clients * per_client
    metrics = request(port, "GET", "/metrics")[2]
    assert (f'edge_requests_total{{method="POST",route="/v1/embed",status="200"}} '
            f'{clients * per_client}') in metrics
    assert f"edge_inference_seconds_count {clients * per_client + 0}" in metrics \
        or "edge_inference_seconds_count" in metrics
    assert 'edge_request_seconds_bucket{route="/v1/embed",le="+Inf"}' in metrics


def test_default_two_workers_batch_16_http_clients_and_answer_as_alone(serve):
    """The runtime's defaults with two threads, as a device runs them: 16 clients over HTTP, one
    of them sending a request over max_texts in the middle. Every answer equals the same text
    sent alone, bit for bit; the bad request gets its 413 and nobody else notices."""
    service, port = serve(threads=2, limits={"max_texts": 4})
    info = request(port, "GET", "/v1/info")[2]
    assert info["workers"] == 2 and info["batching"]["enabled"] is True, info
    texts = [f"client {i} says {'word ' * (i % 5)}hello" for i in range(16)]
    alone = {text: embed(port, [text])[2]["embeddings"][0] for text in texts}
    got: dict = {}

    def client(text):
        for n in range(6):
            if text == texts[7] and n == 3:
                got.setdefault("too many", []).append(embed(port, [text] * 5)[0])
                continue
            status, _, body = embed(port, [text])
            got.setdefault(text, []).append((status, body["embeddings"][0]))

    threads = [threading.Thread(target=client, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert got.pop("too many") == [413]
    for text in texts:
        assert [status for status, _ in got[text]] == [200] * len(got[text])
        assert all(row == alone[text] for _, row in got[text]), text
    assert max(service.worker.batches) > 1  # the concurrent requests did share calls


_LEFTOVER: dict = {}  # bytes read past one response (pipelining), per socket


def read_response(sock) -> tuple[int, dict, bytes]:
    """Read exactly one response (status, headers, body) from a keep-alive socket."""
    data = _LEFTOVER.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a body"
        body += chunk
    if len(body) > length:
        _LEFTOVER[sock.fileno()] = body[length:]
    return int(lines[0].split()[1]), headers, body[:length]


def test_keep_alive_many_requests_one_connection(serve):
    service, port = serve(**LIMITS)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b'{"texts": ["one"]}'
        # two requests in one write (pipelined), then a 400 after the body was read, then more
        sock.sendall(b"POST /v1/embed HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                     + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, data = read_response(sock)
        assert status == 200 and "connection" not in headers
        assert len(json.loads(data)["embeddings"][0]) == service.model.dim
        assert headers["date"].endswith(" GMT") and headers["content-type"] == "application/json"
        assert read_response(sock)[0] == 200
        sock.sendall(post(b"{bad").replace(b"Connection: close\r\n", b""))
        status, headers, data = read_response(sock)
        assert status == 400 and "connection" not in headers  # body consumed: stays open
        sock.sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
        status, _, data = read_response(sock)
        assert status == 200 and json.loads(data)["state"] == "ready"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(10) == b""


def test_http10_closes_unless_keep_alive(serve):
    _, port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "keep-alive"
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(10) == b""


def test_head_limits_and_framing_errors_close(serve):
    from edge_runtime.server import MAX_HEADERS, MAX_LINE

    _, port = serve(**LIMITS)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    cases = [
        (b"GET /" + b"a" * (MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n", 414, "too long"),
        (b"GET /healthz HTTP/1.1\r\nX-Long: " + b"v" * (MAX_LINE + 10) + b"\r\n\r\n", 431,
         "too long"),
        (b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n", 431, "too many headers"),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad header"),
        (b"GET /healthz HTTP/1.1\r\n folded: x\r\n\r\n", 400, "bad header"),
        (POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411, "content-length"),
        (POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "duplicate"),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400, "request syntax"),
        (b"GET  /healthz HTTP/1.1\r\n\r\n", 400, "request syntax"),
    ]
    for data, status, words in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            got, headers, body = read_response(sock)
            assert (got, headers["connection"]) == (status, "close"), data[:40]
            assert words in json.loads(body)["error"].lower(), (data[:40], body)
    assert embed(port, ["still fine"])[0] == 200


def test_early_error_with_unread_body_closes(serve):
    _, port = serve(host="0.0.0.0", token="s3cret")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/embed HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        status, headers, _ = read_response(sock)
        assert status == 401 and headers["connection"] == "close"  # body unread: no reuse
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(10) == b""


def test_expect_100_continue(serve):
    _, port = serve()
    body = b'{"texts": ["after continue"]}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/embed HTTP/1.1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_response(sock)[0] == 200


def test_connection_limit_gives_503(serve, monkeypatch):
    from edge_runtime import server as server_module

    monkeypatch.setattr(server_module.Server, "max_connections", 2)
    _, port = serve(timeout_s=5.0)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for sock in held:  # make sure both are being served (each answered once)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            sock.settimeout(5)
            assert read_response(sock)[0] == 200
        status, headers, body = raw(port, b"GET /v1/info HTTP/1.1\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert "too many connections" in body["error"]
        for probe in ("/healthz", "/readyz"):  # the health gate is answered over the cap
            assert raw(port, b"GET %s HTTP/1.1\r\n\r\n" % probe.encode())[0] == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots come back once the connections end
        if request(port, "GET", "/v1/info")[0] == 200:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("connection slots never released")


def test_server_does_not_import_http_server_or_email(run_cli):
    import subprocess
    import sys

    code = ("import sys, edge_runtime.server, edge_runtime.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('http', 'email', 'hmac', 'hashlib', 'asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.strip() == "[]"


def test_float32_json_round_trips_exactly():
    import numpy as np
    from edge_runtime.server import float32_json

    rows = (np.random.default_rng(1).random((3, 384), dtype=np.float32) - 0.5) / 7
    rows[0, 0], rows[1, 1] = 0.0, -1e-38
    back = np.asarray(json.loads(float32_json(rows)), dtype=np.float32)
    assert np.array_equal(back, rows)
    assert json.loads(float32_json(np.zeros((0, 4), dtype=np.float32))) == []
    assert float32_json(np.array([[np.nan]], dtype=np.float32)) == b"[[NaN]]"


def test_readyz_refuses_exactly_when_embed_refuses_for_heat(serve, fake_sysfs):
    """One definition of serving: /readyz is 503 with the reason whenever /v1/embed refuses."""
    service, port = serve()
    for temp in (45.0, 80.0, 90.0, 80.0, 70.0):
        fake_sysfs.zone(0, temp)
        service.guard.tick()
        embed_status = embed(port, ["warm"])[0]
        ready_status, _, body = request(port, "GET", "/readyz")
        assert ready_status == embed_status, temp
        if ready_status == 503:
            assert body["state"] == "too_hot" and "above the hard limit 85" in body["reason"], body


def test_readyz_refuses_while_the_queue_stays_full(serve, monkeypatch):
    from edge_runtime import service as service_module

    monkeypatch.setattr(service_module, "QUEUE_FULL_S", 0.2)
    service, port = serve(limits={"queue_depth": 1})
    gate, running, queued = fill_the_queue(service)
    assert embed(port, ["c"])[0] == 503
    assert request(port, "GET", "/readyz")[0] == 200  # full for a moment: still serving
    time.sleep(0.3)
    status, _, body = request(port, "GET", "/readyz")
    assert status == 503 and body["state"] == "overloaded" and "queue full" in body["reason"], body
    gate.set()
    running.result(10), queued.result(10)
    assert request(port, "GET", "/readyz")[0] == 200
