"""The device runtime side by side: in-process vs HTTP, 4 clients, cold start, RSS, load mode.

    .venv/bin/python benchmarks/bench_runtime.py [--bundle DIR] [--rounds 30] [--threads 2]

Everything runs on 127.0.0.1 on this machine. In-process and HTTP latencies are measured
round-robin in the same seconds (the server is a separate process, as on the device), so read
the ratio. The issue's targets: HTTP p50 within 1.15x of in-process, cold start to /readyz
<= 0.5 s and RSS after load <= 100 MiB for the MiniLM INT8 bundle.
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

import numpy as np  # noqa: E402

import edge_runtime  # noqa: E402

DEFAULT_BUNDLE = REPO / "build/bundles/all-minilm-l6-v2-int8"
LOAD_PROBE = """
import sys, time
import onnxruntime as ort
from edge_runtime.model import session_options
started = time.perf_counter()
path = sys.argv[1] + "/model.onnx"
source = open(path, "rb").read() if sys.argv[2] == "bytes" else path
session = ort.InferenceSession(source, sess_options=session_options(None),
                               providers=["CPUExecutionProvider"])
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


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "payload")}


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


def start_server(bundle: Path, threads: int, log) -> tuple[subprocess.Popen, int, float]:
    """Start `serve`; return the process, its port and seconds from spawn to /readyz 200."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--bundle",
                             str(bundle), "--port", str(port), "--threads", str(threads)],
                            env=env(), stdout=log, stderr=subprocess.STDOUT)
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
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(per_client):
            took = post(conn, [texts[(index + n) % len(texts)]])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cold-starts", type=int, default=3)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    texts = json.loads((bundle / "bundle.json").read_text())["golden"]["texts"]

    modes = load_modes(bundle, 3)
    log = open(os.devnull, "w")
    colds, rss = [], []
    for _ in range(args.cold_starts):
        proc, port, seconds = start_server(bundle, args.threads, log)
        colds.append(seconds)
        with open(f"/proc/{proc.pid}/status") as status:
            rss.append(int([line for line in status if line.startswith("VmRSS")][0].split()[1]))
        proc.terminate()
        proc.wait(10)

    proc, port, _ = start_server(bundle, args.threads, log)
    try:
        model = edge_runtime.load(bundle, threads=args.threads)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for text in texts:  # warm both
            model.embed([text])
            post(conn, [text])
        local, remote = [], []
        for _ in range(args.rounds):
            for text in texts:
                started = time.perf_counter()
                model.embed([text])
                local.append((time.perf_counter() - started) * 1000)
                remote.append(post(conn, [text]))
        conn.close()
        del model
        clients, per_client = 4, max(args.rounds, 10)
        many, wall = concurrent(port, texts, clients, per_client)
    finally:
        proc.terminate()
        proc.wait(10)

    p50_local, p50_http = pct(local, 50), pct(remote, 50)
    print(f"bundle {bundle.name}  threads {args.threads}  texts {len(texts)}  "
          f"rounds {args.rounds}  (batch 1, 127.0.0.1)")
    print(f"{'':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    print(f"{'in-process embed':34s} {p50_local:8.2f} {pct(local, 95):8.2f} {pct(local, 99):8.2f}")
    print(f"{'HTTP /v1/embed, 1 client':34s} {p50_http:8.2f} {pct(remote, 95):8.2f} "
          f"{pct(remote, 99):8.2f}")
    print(f"{'HTTP /v1/embed, 4 clients':34s} {pct(many, 50):8.2f} {pct(many, 95):8.2f} "
          f"{pct(many, 99):8.2f}   ({len(many)} requests, {len(many) / wall:.0f} req/s)")
    print(f"HTTP / in-process p50 ratio        {p50_http / p50_local:.3f}x   (target <= 1.15x)")
    print(f"cold start to /readyz 200          median {statistics.median(colds):.3f} s  "
          f"(runs {', '.join(f'{c:.3f}' for c in colds)}; target <= 0.5 s)")
    print(f"server RSS when ready              median {statistics.median(rss) / 1024:.1f} MiB"
          f"  (target <= 100 MiB)")
    for mode, (ms, mib) in modes.items():
        print(f"session load from {mode:5s}            {ms:6.1f} ms  RSS {mib:6.1f} MiB")
    faster = min(modes, key=lambda m: modes[m][0])
    print(f"load mode kept: path (faster here: {faster})")


if __name__ == "__main__":
    main()
