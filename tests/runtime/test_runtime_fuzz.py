"""Fuzz `edge_runtime serve` with mutated requests: never a 5xx, never a traceback in its log."""

import json
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from test_runtime_server import _free_port, _wait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REQUESTS = 20_000  # mutated requests sent, one connection each
SEED = 20261207
WALL_S = 90.0  # stop early rather than overrun a busy machine (at least MIN_REQUESTS)
MIN_REQUESTS = 5_000


def _request(method: bytes, path: bytes, body: bytes | None = None, extra=()) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: fuzz", b"Connection: close",
             b"User-Agent: fuzz/1", *extra]
    if body is not None:
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


SEEDS = [
    _request(b"GET", b"/healthz"),
    _request(b"GET", b"/readyz"),
    _request(b"GET", b"/metrics"),
    _request(b"GET", b"/v1/info?x=1"),
    _request(b"POST", b"/v1/embed", json.dumps({"texts": ["hello world", "fuzz"]}).encode()),
    _request(b"POST", b"/v1/embed", json.dumps({"texts": ["é ü 漢字 🙂"]}).encode()),
    _request(b"POST", b"/v1/classify", b'{"texts": ["a"]}'),
    _request(b"POST", b"/v1/qa", b'{"question": "who?", "context": "me"}'),
    _request(b"POST", b"/v1/embed", b'{"texts": ["x"]}', [b"Expect: 100-continue"]),
]
ODD_LENGTHS = [b"-1", b"+5", b"1e3", "²".encode(), b"\xb2", b"\xb9", b"0x10", b"9" * 30,
               b"9" * 5000, b"0" * 5000 + b"7", b"", b" 5", b"5 5", b"5,5", b"4294967297",
               b"18446744073709551617", b"0"]
BAD_BODIES = [b"{", b'{"texts": [1e999]}', b'{"texts": ' + b"1" * 5000 + b"}", b"[" * 5000,
              b'{"texts": ["\\ud800"]}', b'{"texts": null}', b"\xff\xfe", b'{"texts": ["a"]}' * 2,
              b'{"question": 1, "context": []}', b'{"texts": [NaN]}', b'{"texts": ["' + b"a" * 9000
              + b'"]}', b'{"texts": [' + b'"a",' * 200 + b'"a"]}', b"null", b'"texts"', b"",
              b'{"texts": ["a"], "texts": 5}', b'{"texts": ["\\u0000"]}', b"{" * 100000]
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"BREW", b"G\xc3\x89T",
           b"\x80", b"", b"get", b"POST\x00"]
KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
                 b"PATCH")
ODD_BYTES = [b"\x80", b"\xff", "é".encode(), "漢".encode(), b"\x00", b"\r", b"\n", b" ", b":",
             b"\t", b"\x7f"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Apply one to three random mutations to a request."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(9)
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if kind == 0 and data:  # flip bytes
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf)
        elif kind == 1:  # truncate
            data = data[:rng.randrange(len(data) + 1)]
        elif kind == 2 and len(lines) > 1:  # duplicate a header line
            lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(lines[1:]))
            data = b"\r\n".join(lines) + sep + body
        elif kind == 3:  # odd Content-Length
            lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
            lines.append(b"Content-Length: " + rng.choice(ODD_LENGTHS + [b"%d" % (len(body) + 9)]))
            data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        elif kind == 4:  # non-ASCII or control bytes somewhere in the head
            at = rng.randrange(len(head) + 1)
            data = head[:at] + rng.choice(ODD_BYTES) + head[at:] + sep + body
        elif kind == 5:  # a bad JSON body with a matching length
            new = rng.choice(BAD_BODIES)
            lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
            data = b"\r\n".join(lines + [b"Content-Length: %d" % len(new)]) + b"\r\n\r\n" + new
        elif kind == 6:  # another method
            words = lines[0].split(b" ", 1)
            lines[0] = rng.choice(METHODS) + b" " + (words[1] if len(words) > 1 else b"")
            data = b"\r\n".join(lines) + sep + body
        elif kind == 7:  # bare LF line ends, or a stray version
            data = data.replace(b"\r\n", b"\n") if rng.random() < 0.5 else \
                data.replace(b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x"]), 1)
        else:  # many headers, or a long one
            many = [b"X-F%d: %s" % (i, b"v" * rng.choice([1, 100, 9000])) for i in
                    range(rng.choice([1, 10, 70]))]
            data = b"\r\n".join(lines[:1] + many + lines[1:]) + sep + body
    return data


def looks_complete(data: bytes) -> bool:
    """Would a server answer without waiting for more bytes? (Else the client half-closes.)"""
    lines, at = [], 0
    while True:  # the head ends at the first empty line, LF or CRLF (as the server reads it)
        end = data.find(b"\n", at)
        if end < 0:
            return False
        line, at = data[at:end].removesuffix(b"\r"), end + 1
        if not line and lines:
            break
        lines.append(line)
    body = data[at:]
    lengths = [ln.split(b":", 1)[1].strip() for ln in lines
               if ln.lower().startswith(b"content-length:")]
    if not lengths or not lengths[-1].isdigit() or len(lengths) > 1:
        return True
    digits = lengths[-1].lstrip(b"0") or b"0"
    return len(digits) > 9 or len(body) >= int(digits)


def protocol_5xx(status: str, data: bytes) -> bool:
    """Return True for the two 5xx HTTP prescribes for a request line: 501 for a method the
    server does not know (a well-formed token), 505 for a well-formed version it does not speak."""
    words = data.split(b"\n", 1)[0].removesuffix(b"\r").split(b" ")
    if len(words) != 3:
        return False
    if status == "501":
        return re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", words[0]) is not None \
            and words[0] not in KNOWN_METHODS
    return status == "505" and re.fullmatch(rb"HTTP/[0-9]\.[0-9]", words[2]) is not None \
        and words[2] not in (b"HTTP/1.0", b"HTTP/1.1")


def exchange(port: int, data: bytes) -> bytes:
    """Send one request; return the response's status line (b"" when the server just closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            if not looks_complete(data):
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered early and closed
            pass
        got = b""
        try:
            while b"\r\n" not in got:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
                if got.startswith(b"HTTP/1.1 100 "):
                    got = got.partition(b"\r\n\r\n")[2]
        except ConnectionResetError:
            pass
        return got.split(b"\r\n", 1)[0] if b"\r\n" in got else got


def test_fuzzed_requests_never_5xx_nor_traceback(tiny_bundle, tmp_path):
    port = _free_port()
    log_path = tmp_path / "server.log"
    (tmp_path / "runtime.yaml").write_text("threads: 1\n")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--bundle",
                                 str(tiny_bundle), "--port", str(port), "--config",
                                 str(tmp_path / "runtime.yaml")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        _wait(port, "/readyz", 200)
        rng, statuses, bad = random.Random(SEED), Counter(), []
        started = time.monotonic()
        sent = 0
        while sent < REQUESTS:
            sent += 1
            data = mutate(rng, rng.choice(SEEDS))
            line = exchange(port, data)
            status = line.split(b" ")[1][:3].decode("latin-1") if line.startswith(b"HTTP/") \
                else ("none" if not line else "garbage")
            statuses[status] += 1
            if (status.startswith("5") and not protocol_5xx(status, data)) or status == "garbage":
                bad.append((status, data[:200]))
            if time.monotonic() - started > WALL_S:
                break
        took = time.monotonic() - started
        print(f"fuzz: {sent} requests in {took:.1f} s, statuses {dict(statuses)}")
        assert sent >= MIN_REQUESTS, f"only {sent} requests in {WALL_S} s"
        print("bad:", Counter(status for status, _ in bad))
        assert not bad, bad[:10]
        assert _wait(port, "/readyz", 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
