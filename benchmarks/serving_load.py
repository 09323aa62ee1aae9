"""Serving throughput for bench_runtime.py: req/s and p50/p99 at 1, 4 and 16 clients, short and
medium texts, micro-batching off and on side by side, with an A/A control for the noise.

Three servers run at once: `off` (batching.enabled: false), `on` (true) and `off again` (a second
identical `off`). Each round measures every (length, clients) cell on all three, in an order
that rotates each round, so no server always goes first. The spread between `off` and `off
again` is the noise floor: an on/off ratio inside it is "within noise".
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SERVERS = ("off", "on", "off again")
CLIENTS = (1, 4, 16)
LENGTHS = {"short": 16, "medium": 64}


def cpu_seconds(pid: int) -> float:
    """Return the process's user + system CPU seconds so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(directory: Path, name: str, enabled: bool, threads: int) -> Path:
    path = directory / f"runtime-{name.replace(' ', '-')}.yaml"
    path.write_text(f"threads: {threads}\nbatching:\n  enabled: {str(enabled).lower()}\n"
                    f"governor: null\n")
    return path


def load(port: int, client_class, post_raw, text: str, clients: int,
         seconds: float) -> tuple[list[float], float]:
    """Keep `clients` keep-alive clients busy for `seconds`; return latencies (ms), req/s."""
    samples: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        conn = client_class(port)
        mine = []
        while time.perf_counter() < stop:
            mine.append(post_raw(conn, [text]))
        conn.close()
        with lock:
            samples.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, len(samples) / (time.perf_counter() - started)


def measure(bundle: Path, threads: int, texts: dict[str, str], rounds: int, seconds: float,
            start_server, client_class, post_raw, workdir: Path) -> dict:
    """Return {(length, clients, server): [(req/s, p50, p99, server CPU ms a request) per round]}.

    The server's CPU per request is printed beside the wall-clock figures: on a shared machine
    it moves much less with other people's load than req/s does.
    """
    log = open("/dev/null", "w")
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for name in SERVERS:
            config = write_config(workdir, name, name == "on", threads)
            proc, port, _ = start_server(bundle, threads, log, config)
            procs[name] = (proc, port)
        for _, port in procs.values():  # warm each once
            load(port, client_class, post_raw, texts["short"], 4, 0.3)
        cells: dict = {}
        for index in range(rounds):
            order = list(SERVERS[index % 3:] + SERVERS[:index % 3])
            for length, text in texts.items():
                for clients in CLIENTS:
                    for name in order:
                        proc, port = procs[name]
                        cpu = cpu_seconds(proc.pid)
                        samples, rate = load(port, client_class, post_raw, text, clients, seconds)
                        cpu_ms = (cpu_seconds(proc.pid) - cpu) * 1e3 / max(len(samples), 1)
                        cells.setdefault((length, clients, name), []).append(
                            (rate, float(np.percentile(samples, 50)),
                             float(np.percentile(samples, 99)), cpu_ms))
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
          f"{'noise':>6s} | {'cpu ms/req off':>14s} {'on':>5s} {'again':>5s}")
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
                  f" {verdict}")
    single = med(("short", 1, "off"), 0)
    best = med(("short", 16, "on"), 0)
    p99 = med(("short", 16, "on"), 2)
    print(f"target: 16 clients, short texts, batching on: {best:.0f} req/s = {best / single:.2f}x "
          f"sequential single-client ({single:.0f} req/s; target >= 1.8x), p99 {p99:.1f} ms "
          f"(target <= 100 ms); single-client p50 on/off "
          f"{med(('short', 1, 'on'), 1) / med(('short', 1, 'off'), 1):.3f}x")
