"""The device runtime side by side: in-process vs HTTP, 4 clients, cold start, RSS, load mode,
and serving throughput at 1/4/16 clients with micro-batching off and on (serving_load.py).

    .venv/bin/python benchmarks/bench_runtime.py [--bundle DIR] [--rounds 30] [--threads 2]
    .venv/bin/python benchmarks/bench_runtime.py --serving-only [--serving-rounds 3]

Everything runs on 127.0.0.1 on this machine. In-process and HTTP latencies are measured
round-robin in the same seconds (the server is a separate process, as on the device), so read
the ratio. The issue's targets: HTTP p50 within 1.15x of in-process, cold start to /readyz
<= 0.5 s and RSS after load <= 100 MiB for the MiniLM INT8 bundle.

The HTTP client is a bare keep-alive socket (RawClient): http.client parses every response's
headers with the email package (~0.1-0.2 ms), which is the client's cost, not the server's; its
ratio is printed too. Last, flush-to-zero (ORT session.set_denormal_as_zero) side by side with
an A/A control; the runtime does not set it (no difference beyond noise, identical outputs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "payload"))

import edge_runtime  # noqa: E402
import numpy as np  # noqa: E402
import serving_load  # noqa: E402

DEFAULT_BUNDLE = REPO / "build/bundles/all-minilm-l6-v2-int8"
LOAD_PROBE = """
import sys, time
from pathlib import Path
from edge_runtime.model import _session, session_options
started = time.perf_counter()
session = _session(Path(sys.argv[1]) / "model.onnx", session_options(None), sys.argv[2] == "bytes")
seconds = time.perf_counter() - started
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print(seconds, int(rss) / 1024)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(samples, q) -> float:
    return float(np.percentile(np.asarray(samples), q))


def env(payload: Path | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(payload or REPO / "payload")}


def load_modes(bundle: Path, repeats: int) -> dict:
    """Load the session from a path and from bytes in fresh processes; median ms and MiB."""
    out = {}
    for mode in ("path", "bytes"):
        runs = [subprocess.run([sys.executable, "-c", LOAD_PROBE, str(bundle), mode], env=env(),
                               capture_output=True, text=True, check=True).stdout.split()
                for _ in range(repeats)]
        out[mode] = (statistics.median(float(r[0]) * 1000 for r in runs),
                     statistics.median(float(r[1]) for r in runs))
    return out


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int([line for line in status if line.startswith("VmRSS")][0].split()[1])


def proc_anon_kib(pid: int) -> int:
    """Return the process's anonymous (private: heap, mmap, stacks) resident KiB.

    RSS also counts the resident pages of mapped shared libraries (~40 MiB here, half of it
    ONNX Runtime's 36 MB .so), which the process shares with any other user of those files;
    anonymous memory is what this process alone holds. Both are printed.
    """
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return int([line for line in rollup if line.startswith("Anonymous:")][0].split()[1])


def start_server(bundle: Path, threads: int, log, config: Path | None = None,
                 payload: Path | None = None) -> tuple[subprocess.Popen, int, float]:
    """Start `serve` (from payload, default this tree's); return the process, its port and
    seconds from spawn to /readyz 200."""
    port = free_port()
    started = time.perf_counter()
    extra = ["--config", str(config)] if config else []
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--bundle",
                             str(bundle), "--port", str(port), "--threads", str(threads), *extra],
                            env=env(payload), stdout=log, stderr=subprocess.STDOUT)
    while time.perf_counter() - started < 60:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.005)
    proc.kill()
    raise SystemExit("server never became ready")


class RawClient:
    """A keep-alive HTTP/1.1 client on a bare socket: one write per request, no header parsing
    beyond status and Content-Length, so the HTTP numbers measure the server, not http.client."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\n" \
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        sock = self.sock
        sock.sendall(self.head % len(body) + body)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += sock.recv(65536)
        head = buf[:end].lower()
        start = head.find(b"\r\ncontent-length:") + 17
        length = int(head[start:head.find(b"\r\n", start) if head.find(b"\r\n", start) > 0
                     else len(head)])
        need = end + 4 + length
        while len(buf) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed mid-response")
            buf += chunk
        self.buf = buf[need:]
        return int(head[9:12]), buf[end + 4:need]

    def close(self) -> None:
        self.sock.close()


def post_raw(client: RawClient, texts) -> float:
    body = json.dumps({"texts": texts}).encode()
    started = time.perf_counter()
    status, _ = client.post(body)
    took = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"/v1/embed answered {status}")
    return took


def post(conn, texts) -> float:
    body = json.dumps({"texts": texts})
    started = time.perf_counter()
    conn.request("POST", "/v1/embed", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"/v1/embed answered {response.status}")
    return (time.perf_counter() - started) * 1000


def concurrent(port, texts, clients, per_client) -> tuple[list[float], float]:
    samples, lock = [], threading.Lock()

    def client(index):
        conn = RawClient(port)
        for n in range(per_client):
            took = post_raw(conn, [texts[(index + n) % len(texts)]])
            with lock:
                samples.append(took)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


def text_of(tokenizer, words, n) -> tuple[str, int]:
    """Return the shortest text of the words (cycled) that tokenizes to >= n tokens."""
    for k in range(1, 4 * n):
        text = " ".join(words[i % len(words)] for i in range(k))
        got = len(tokenizer.encode(text).ids)
        if got >= n:
            return text, got
    return text, got


def flush_to_zero(bundle: Path, threads: int, texts, runs: int) -> list[tuple]:
    """p50 per length with denormals as-is, flushed to zero, and as-is again (an A/A control
    for the noise), run round-robin in one process; plus max |difference| of the outputs."""
    sessions = {"off": edge_runtime.load(bundle, threads=threads),
                "on": edge_runtime.load(bundle, threads=threads, flush_denormals=True),
                "off2": edge_runtime.load(bundle, threads=threads)}
    words = " ".join(texts).split()
    rows = []
    for n in (16, 64, 128, 256):
        text, got = text_of(sessions["off"].tokenizer, words, n)
        times = {name: [] for name in sessions}
        order = list(sessions.items())
        for index in range(runs + 2):
            for name, model in order[index % 3:] + order[:index % 3]:  # rotate who goes first
                started = time.perf_counter()
                model.embed([text])
                if index >= 2:  # two warm-up rounds
                    times[name].append((time.perf_counter() - started) * 1000)
        diff = float(np.abs(sessions["off"].embed([text]) - sessions["on"].embed([text])).max())
        rows.append((got, *(statistics.median(times[name]) for name in sessions), diff))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--ftz-runs", type=int, default=40, help="0 skips flush-to-zero")
    parser.add_argument("--serving-rounds", type=int, default=3, help="0 skips serving")
    parser.add_argument("--serving-seconds", type=float, default=2.0, help="per cell and round")
    parser.add_argument("--serving-only", action="store_true", help="only the serving table")
    parser.add_argument("--serving-workers", type=int, default=1,
                        help="runtime.workers of one more server, batching on (default 1: the "
                        "runtime's default before 2026-12-08; 0 leaves it out)")
    parser.add_argument("--serving-base", help="another checkout whose payload serves a fourth "
                        "server, batching on (before/after in one run)")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    texts = json.loads((bundle / "bundle.json").read_text())["golden"]["texts"]
    if args.serving_only:
        serving(bundle, args, texts)
        return

    modes = load_modes(bundle, 3)
    log = open(os.devnull, "w")
    colds, rss, anon = [], [], []
    for _ in range(args.cold_starts):
        proc, port, seconds = start_server(bundle, args.threads, log)
        colds.append(seconds)
        rss.append(proc_rss_kib(proc.pid))
        anon.append(proc_anon_kib(proc.pid))
        proc.terminate()
        proc.wait(10)

    proc, port, _ = start_server(bundle, args.threads, log)
    try:
        model = edge_runtime.load(bundle, threads=args.threads)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        raw = RawClient(port)
        for text in texts:  # warm all three
            model.embed([text])
            post(conn, [text])
            post_raw(raw, [text])
        local, remote, remote_raw = [], [], []
        for _ in range(args.rounds):
            for text in texts:
                started = time.perf_counter()
                model.embed([text])
                local.append((time.perf_counter() - started) * 1000)
                remote_raw.append(post_raw(raw, [text]))
                remote.append(post(conn, [text]))
        conn.close()
        raw.close()
        del model
        clients, per_client = 4, max(args.rounds, 10)
        many, wall = concurrent(port, texts, clients, per_client)
        rss_loaded = proc_rss_kib(proc.pid)
        time.sleep(1.5)  # the worker hands freed memory back once requests stop for 1 s
        rss_settled = proc_rss_kib(proc.pid)
        long_text = " ".join(texts) * 8  # truncated to max_seq_len (256) by the tokenizer
        raw_long = RawClient(port)
        for _ in range(3):  # long batches: what RSS looks like after a heavier load
            post_raw(raw_long, [long_text] * 8)
        raw_long.close()
        time.sleep(0.2)  # the worker trims freed memory when idle, after answering
        rss_long = proc_rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)

    ftz = flush_to_zero(bundle, args.threads, texts, args.ftz_runs) if args.ftz_runs else []
    p50_local, p50_http, p50_raw = pct(local, 50), pct(remote, 50), pct(remote_raw, 50)
    print(f"bundle {bundle.name}  threads {args.threads}  texts {len(texts)}  "
          f"rounds {args.rounds}  (batch 1, 127.0.0.1)")
    print(f"{'':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    print(f"{'in-process embed':34s} {p50_local:8.2f} {pct(local, 95):8.2f} {pct(local, 99):8.2f}")
    print(f"{'HTTP /v1/embed, 1 raw client':34s} {p50_raw:8.2f} {pct(remote_raw, 95):8.2f} "
          f"{pct(remote_raw, 99):8.2f}")
    print(f"{'HTTP /v1/embed, 1 http.client':34s} {p50_http:8.2f} {pct(remote, 95):8.2f} "
          f"{pct(remote, 99):8.2f}")
    print(f"{'HTTP /v1/embed, 4 raw clients':34s} {pct(many, 50):8.2f} {pct(many, 95):8.2f} "
          f"{pct(many, 99):8.2f}   ({len(many)} requests, {len(many) / wall:.0f} req/s)")
    print(f"HTTP / in-process p50 ratio        {p50_raw / p50_local:.3f}x raw client "
          f"(target <= 1.15x); {p50_http / p50_local:.3f}x with http.client")
    print(f"cold start to /readyz 200          median {statistics.median(colds):.3f} s  "
          f"(runs {', '.join(f'{c:.3f}' for c in colds)}; target <= 0.5 s)")
    print(f"server RSS when ready              median {statistics.median(rss) / 1024:.1f} MiB;"
          f" right after the load above {rss_loaded / 1024:.1f} MiB, 1.5 s later "
          f"{rss_settled / 1024:.1f} MiB; after 3 x (8 x 256 tokens) "
          f"{rss_long / 1024:.1f} MiB  (target <= 100 MiB)")
    print(f"  of which anonymous when ready    median {statistics.median(anon) / 1024:.1f} MiB "
          f"(the rest: mapped pages of shared libraries)")
    for mode, (ms, mib) in modes.items():
        print(f"session load from {mode:5s}            {ms:6.1f} ms  RSS {mib:6.1f} MiB")
    faster = min(modes, key=lambda m: modes[m][0])
    print(f"load mode kept: path (faster here: {faster})")
    if ftz:
        print(f"flush-to-zero (session.set_denormal_as_zero), batch 1, p50 ms over "
              f"{args.ftz_runs} runs, round-robin; 'off again' is a second plain session (noise)")
        print(f"{'tokens':>6s} {'off':>8s} {'on':>8s} {'off again':>10s} {'on/off':>7s} "
              f"{'max |on-off|':>13s}")
        for tokens, off, on, again, diff in ftz:
            print(f"{tokens:6d} {off:8.2f} {on:8.2f} {again:10.2f} {on / off:7.3f} {diff:13.2e}")
    serving(bundle, args, texts)


def serving(bundle: Path, args, texts) -> None:
    """Measure and print the serving table (batching off / on / off again)."""
    if not args.serving_rounds:
        return
    import tempfile

    tokenizer = edge_runtime.load(bundle, threads=1).tokenizer
    words = " ".join(texts).split()
    picked = {name: text_of(tokenizer, words, n) for name, n in serving_load.LENGTHS.items()}
    with tempfile.TemporaryDirectory() as workdir:
        cells = serving_load.measure(bundle, args.threads, {k: v[0] for k, v in picked.items()},
                                     args.serving_rounds, args.serving_seconds, start_server,
                                     Path(workdir), Path(args.serving_base) if args.serving_base
                                     else None, args.serving_workers or None)
    serving_load.report(cells, {k: v[1] for k, v in picked.items()}, args.serving_rounds,
                        args.serving_seconds)


if __name__ == "__main__":
    main()
