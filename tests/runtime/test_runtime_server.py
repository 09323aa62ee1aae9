"""The HTTP service as a real subprocess: health, readiness, embed, JSON errors, SIGTERM."""

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), json.loads(response.read())
    finally:
        conn.close()


def _wait(port, path, status, seconds=30.0):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = _request(port, "GET", path)
            if last[0] == status:
                return last
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"GET {path} never returned {status}; last {last}")


@pytest.fixture
def start_server(tmp_path):
    procs = []

    def start(bundle, config_port=None):
        port = _free_port()
        args = [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle)]
        if config_port is None:
            args += ["--port", str(port)]
        else:  # the port comes from runtime.yaml when the flag is absent
            (tmp_path / "runtime.yaml").write_text(f"port: {port}\nthreads: 1\n")
            args += ["--config", str(tmp_path / "runtime.yaml")]
        log = open(tmp_path / f"server-{port}.log", "w+")
        procs.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), log))
        return port, procs[-1][0], log

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_server_routes_and_sigterm(tiny_bundle, start_server):
    port, proc, log = start_server(tiny_bundle, config_port=True)
    assert _wait(port, "/healthz", 200)[2] == {"status": "alive"}
    assert _wait(port, "/readyz", 200)[2]["status"] == "ready"

    body = json.dumps({"texts": ["hello world", "the quick brown fox"]})
    status, ctype, data = _request(port, "POST", "/v1/embed", body,
                                   {"Content-Type": "application/json"})
    assert status == 200 and ctype == "application/json"
    assert len(data["embeddings"]) == 2 and data["ms"] >= 0
    assert abs(sum(v * v for v in data["embeddings"][0]) - 1.0) < 1e-4

    cases = [
        ("POST", "/v1/embed", "{not json", 400, "not valid JSON"),
        ("POST", "/v1/embed", json.dumps({"texts": "one"}), 400, "expected"),
        ("POST", "/v1/embed", json.dumps({"texts": [1, 2]}), 400, "expected"),
        ("POST", "/v1/embed", json.dumps({"texts": []}), 400, "1..64"),
        ("GET", "/nope", None, 404, "no route"),
        ("POST", "/healthz", "{}", 405, "not allowed"),
    ]
    for method, path, body, expected, message in cases:
        status, ctype, data = _request(port, method, path, body)
        assert (status, ctype) == (expected, "application/json"), (path, body and body[:20])
        assert message in data["error"]

    # a declared body over the limit is refused before it is read
    status, _, data = _request(port, "POST", "/v1/embed", "{}",
                               {"Content-Length": str(2 << 20)})
    assert status == 413 and "larger than" in data["error"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log.seek(0)
    text = log.read()
    assert "selftest passed=True" in text and "stopped" in text


def test_readyz_503_when_golden_check_fails(tiny_bundle, start_server, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["golden"]["embeddings"] = [[-v for v in row] for row in meta["golden"]["embeddings"]]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    port, proc, _ = start_server(bundle)
    _wait(port, "/healthz", 200)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, data = _request(port, "GET", "/readyz")
        if "below" in data.get("error", ""):
            break
        time.sleep(0.1)
    assert status == 503 and "not ready" in data["error"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_affinity_and_threads_applied_and_reported(tiny_bundle, fake_sysfs, tmp_path):
    """On this 2-core machine: affinity [0] pins the server to CPU 0 with one ORT thread."""
    port = _free_port()
    config = tmp_path / "runtime.yaml"
    config.write_text(json.dumps({"port": port, "affinity": [0], "threads": 1, "spin": False,
                                  "sysfs_root": str(fake_sysfs.root), "governor": "performance",
                                  "target": "lab-01"}))
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--bundle",
                             str(tiny_bundle), "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(port, "/readyz", 200)
        status, _, info = _request(port, "GET", "/v1/info")
        assert status == 200
        assert (info["affinity"], info["threads"], info["spin"]) == ([0], 1, False)
        assert info["target"] == "lab-01" and info["governor"]["drift"] == []
        with open(f"/proc/{proc.pid}/status") as status_file:
            allowed = [line for line in status_file if line.startswith("Cpus_allowed_list")]
        assert allowed[0].split()[1] == "0"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log.close()


def test_stop_does_not_wait_for_the_accept_loops_poll(tmp_path):
    """The idle accept loop wakes rarely (server.POLL_S); a stop pokes it: a 60 s poll ends at once."""
    import socketserver
    import threading

    from edge_runtime import server as server_mod

    srv = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    loop = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 60}, daemon=True)
    loop.start()
    time.sleep(0.2)  # in its select
    started = time.monotonic()
    server_mod._shut_down(srv)
    loop.join(10)
    srv.server_close()
    assert not loop.is_alive() and time.monotonic() - started < 10
