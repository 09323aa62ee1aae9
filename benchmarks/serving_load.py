"""Serving throughput for bench_runtime.py: req/s and p50/p99 at 1, 4 and 16 clients, short and
medium texts, micro-batching off and on side by side, with an A/A control for the noise.

Three servers run at once: `off` (batching.enabled: false), `on` (true) and `off again` (a second
identical `off`); with a base tree (`--serving-base DIR`: another checkout, e.g. a worktree of
the previous commit) a fourth, `on (base)`, runs that tree's payload with batching on. With
`--serving-workers N` another, `workers`, serves with
batching on and runtime.workers N (default 1: one inference thread, the runtime's default before
2026-12-08; the other servers take the runtime's default, two where it has two threads). Each
round measures every (length, clients) cell on every server, in an order that rotates each
round, so no server always goes first. The spread between `off` and `off
again` is the noise floor: an on/off ratio inside it is "within noise".

The clients are keep-alive sockets driven by one selector thread (each sends its next request as
soon as its answer is in): 16 Python client threads would take a share of the 2 cores and of the
GIL that grows with the client count, so the 16-client cells would measure the load generator.
The server's CPU per request is split into its connection threads (HTTP framing, JSON decode and
encode) and its long-lived threads (the inference worker and ORT's intra-op pool: tokenizing,
the model, pooling).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SERVERS = ("off", "on", "off again")
BASE = "on (base)"
WORKERS = "workers"
CLIENTS = (1, 4, 16)
LENGTHS = {"short": 16, "medium": 64}


def cpu_seconds(pid: int) -> float:
    """Return the process's user + system CPU seconds so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(directory: Path, name: str, enabled: bool, threads: int, workers: int | None = None) -> Path:
    path = directory / f"runtime-{name.replace(' ', '-')}.yaml"
    count = "null" if workers is None else workers
    path.write_text(f"threads: {threads}\nworkers: {count}\nbatching:\n  enabled: {str(enabled).lower()}\n"
                    f"governor: null\n")
    return path


def thread_cpu(pid: int) -> dict[int, float]:
    """Return {thread id: user + system CPU seconds} for the process's live threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between listdir and open
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def request_bytes(text: str) -> bytes:
    body = json.dumps({"texts": [text]}).encode()
    return (b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _answered(buf: bytearray) -> int:
    """Return the length of the whole response at the start of buf (0: not all in yet)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buf[:end]).lower()
    if head[9:12] != b"200":
        raise SystemExit(f"/v1/embed answered {head[9:12].decode()}")
    start = head.find(b"\r\ncontent-length:") + 17
    stop = head.find(b"\r\n", start)
    need = end + 4 + int(head[start:stop if stop > 0 else len(head)])
    return need if len(buf) >= need else 0


def load(port: int, text: str, clients: int, seconds: float) -> tuple[list[float], float]:
    """Keep `clients` keep-alive connections busy for `seconds` from one selector thread;
    return latencies (ms) and req/s. Requests still in flight at the end are not counted."""
    request = request_bytes(text)
    selector = selectors.DefaultSelector()
    sent: dict[socket.socket, list] = {}
    samples: list[float] = []
    try:
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(sock, selectors.EVENT_READ)
            sent[sock] = [bytearray(), 0.0]
        started = time.perf_counter()
        stop = started + seconds
        for sock, state in sent.items():
            state[1] = time.perf_counter()
            sock.sendall(request)
        while (now := time.perf_counter()) < stop:
            wait = min(stop - now, 30.0)
            events = selector.select(wait)
            if not events and wait >= 30.0:
                raise SystemExit("no answer for 30 s")
            for key, _ in events:
                sock = key.fileobj  # type: ignore[assignment]
                state = sent[sock]
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("server closed a connection")
                state[0] += chunk
                need = _answered(state[0])
                if need:
                    del state[0][:need]
                    now = time.perf_counter()
                    samples.append((now - state[1]) * 1e3)
                    state[1] = now
                    sock.sendall(request)
        return samples, len(samples) / (time.perf_counter() - started)
    finally:
        for sock in sent:
            sock.close()
        selector.close()


def measure(bundle: Path, threads: int, texts: dict[str, str], rounds: int, seconds: float,
            start_server, workdir: Path, base: Path | None = None, workers: int | None = None) -> dict:
    """Return {(length, clients, server): [(req/s, p50, p99, server CPU ms a request, of which
    connection threads' ms) per round]}.

    The server's CPU per request is printed beside the wall-clock figures: on a shared machine
    it moves much less with other people's load than req/s does.
    """
    log = open("/dev/null", "w")
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        servers = (*SERVERS, *((BASE,) if base else ()), *((WORKERS,) if workers else ()))
        for name in servers:
            config = write_config(workdir, name, name in ("on", BASE, WORKERS), threads,
                                  workers if name == WORKERS else None)
            proc, port, _ = start_server(bundle, threads, log, config,
                                         payload=base / "payload" if name == BASE else None)
            procs[name] = (proc, port)
        for _, port in procs.values():  # warm each once
            load(port, texts["short"], 4, 0.3)
        cells: dict = {}
        for index in range(rounds):
            turn = index % len(servers)
            order = list(servers[turn:] + servers[:turn])
            for length, text in texts.items():
                for clients in CLIENTS:
                    for name in order:
                        proc, port = procs[name]
                        cpu, before = cpu_seconds(proc.pid), thread_cpu(proc.pid)
                        samples, rate = load(port, text, clients, seconds)
                        time.sleep(0.05)  # the connection threads see the close and end
                        after, total = thread_cpu(proc.pid), cpu_seconds(proc.pid) - cpu
                        # threads alive before and after: the worker, ORT's pool, main, thermal
                        lasting = sum(after[tid] - before[tid] for tid in after if tid in before)
                        per = 1e3 / max(len(samples), 1)
                        cells.setdefault((length, clients, name), []).append(
                            (rate, float(np.percentile(samples, 50)),
                             float(np.percentile(samples, 99)), total * per,
                             (total - lasting) * per))
            print(f"  serving round {index + 1}/{rounds} done", file=sys.stderr)
        return cells
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        log.close()


def report(cells: dict, tokens: dict[str, int], rounds: int, seconds: float) -> None:
    """Print the table: medians over rounds, on/off ratios, the A/A noise floor, the target."""
    def med(key, field):
        return statistics.median(row[field] for row in cells[key])

    print(f"serving: req/s and latency, batching off / on / off again (A/A control), medians of "
          f"{rounds} rounds of {seconds:.1f} s per cell, order rotated each round")
    print(f"{'texts':>14s} {'clients':>7s} | {'req/s off':>9s} {'on':>7s} {'again':>7s} | "
          f"{'p50 off':>7s} {'on':>6s} | {'p99 off':>7s} {'on':>6s} | {'on/off':>6s} "
          f"{'noise':>6s} | {'cpu ms/req off':>14s} {'on':>5s} {'again':>5s} | {'http off':>8s} "
          f"{'on':>5s}")
    for length in tokens:
        for clients in CLIENTS:
            off, on, again = (med((length, clients, name), 0) for name in SERVERS)
            noise = abs(again / off - 1)
            ratio = on / off
            verdict = "within noise" if abs(ratio - 1) <= noise else ""
            print(f"{length:>7s} ({tokens[length]:3d}t) {clients:7d} | {off:9.0f} {on:7.0f} "
                  f"{again:7.0f} | {med((length, clients, 'off'), 1):7.2f} "
                  f"{med((length, clients, 'on'), 1):6.2f} | "
                  f"{med((length, clients, 'off'), 2):7.2f} {med((length, clients, 'on'), 2):6.2f}"
                  f" | {ratio:6.2f} {noise:6.1%} | {med((length, clients, 'off'), 3):14.2f} "
                  f"{med((length, clients, 'on'), 3):5.2f} {med((length, clients, 'off again'), 3):5.2f}"
                  f" | {med((length, clients, 'off'), 4):8.2f} {med((length, clients, 'on'), 4):5.2f}"
                  f" {verdict}")
    print("cpu ms/req: the server's CPU per request (all threads); http: of it, the connection "
          "threads' (HTTP framing, JSON in and out); the rest is the worker and ORT's pool")
    if any(key[2] == BASE for key in cells):
        print("on vs on (base): req/s, p99 ms, server CPU ms a request")
        for length in tokens:
            for clients in CLIENTS:
                on, base = (length, clients, "on"), (length, clients, BASE)
                print(f"{length:>7s} {clients:3d} clients | req/s {med(on, 0):5.0f} vs {med(base, 0):5.0f}"
                      f" ({med(on, 0) / med(base, 0):.2f}x) | p99 {med(on, 2):7.1f} vs {med(base, 2):7.1f}"
                      f" | cpu {med(on, 3):6.2f} vs {med(base, 3):6.2f} ({med(on, 3) / med(base, 3):.2f}x)")
    if any(key[2] == WORKERS for key in cells):
        print("on (default workers) vs workers (runtime.workers = --serving-workers): req/s, p50 and p99 ms, "
              "server CPU ms a request")
        for length in tokens:
            for clients in CLIENTS:
                on, many = (length, clients, "on"), (length, clients, WORKERS)
                print(f"{length:>7s} {clients:3d} clients | req/s {med(on, 0):5.0f} vs {med(many, 0):5.0f}"
                      f" ({med(on, 0) / med(many, 0):.2f}x) | p50 {med(on, 1):6.2f} vs {med(many, 1):6.2f}"
                      f" | p99 {med(on, 2):7.1f} vs {med(many, 2):7.1f}"
                      f" | cpu {med(on, 3):6.2f} vs {med(many, 3):6.2f}")
    single = med(("short", 1, "off"), 0)
    for name in ("on", WORKERS):
        if ("short", 16, name) not in cells:
            continue
        best = med(("short", 16, name), 0)
        p99 = med(("short", 16, name), 2)
        print(f"target ({name}): 16 clients, short texts: {best:.0f} req/s = {best / single:.2f}x "
              f"sequential single-client ({single:.0f} req/s; target >= 1.8x), p99 {p99:.1f} ms "
              f"(target <= 100 ms); single-client p50 {name}/off "
              f"{med(('short', 1, name), 1) / med(('short', 1, 'off'), 1):.3f}x")
