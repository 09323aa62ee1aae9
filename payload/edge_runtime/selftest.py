"""Check a loaded model against the bundle's golden outputs and measure its latency."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["SelftestResult", "selftest", "percentiles", "profile", "cosines", "rss_mib"]


@dataclass(frozen=True)
class SelftestResult:
    """Per-text cosines against the golden embeddings and batch-1 latency percentiles (ms)."""

    passed: bool
    reason: str
    cosines: list[float]
    min_cosine: float
    latency_ms: dict[str, float]
    rss_mib: float = 0.0

    def lines(self) -> list[str]:
        """Return a short human report, one line per item."""
        out = [f"cosine[{i}] = {value:.6f}" for i, value in enumerate(self.cosines)]
        out.append("latency_ms " + " ".join(f"{k}={v:.2f}" for k, v in self.latency_ms.items()
                                            if k != "p90"))
        out.append(f"rss_mib {self.rss_mib:.1f}")
        out.append(("PASS" if self.passed else "FAIL") + f": {self.reason}")
        return out


def cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Return the row-wise cosine similarity of two (n, dim) arrays."""
    a = actual / np.maximum(np.linalg.norm(actual, axis=1, keepdims=True), 1e-12)
    b = expected / np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """Return p50/p90/p95/p99 of latency samples."""
    values = np.percentile(np.asarray(samples_ms, dtype=np.float64), [50, 90, 95, 99])
    return {name: float(value) for name, value in zip(("p50", "p90", "p95", "p99"), values)}


def rss_mib() -> float:
    """Return this process's VmRSS from /proc/self/status in MiB (0.0 if unknown)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _timed(model, texts: list[str], runs: int) -> tuple[np.ndarray, list[float]]:
    samples, rows = [], []
    for run in range(max(runs, 1)):
        for text in texts:
            started = time.perf_counter()
            row = model.embed([text])
            samples.append((time.perf_counter() - started) * 1000.0)
            if run == 0:
                rows.append(row[0])
    return np.stack(rows), samples


def selftest(model, runs: int = 3) -> SelftestResult:
    """Embed every golden text at batch 1 and compare each with its expected embedding."""
    golden = model.meta.get("golden")
    if not isinstance(golden, dict) or not golden.get("texts"):
        return SelftestResult(False, "bundle.json has no golden texts", [], 0.0, {})
    texts, threshold = list(golden["texts"]), float(golden.get("min_cosine", 1.0))
    expected = np.asarray(golden.get("embeddings", []), dtype=np.float32)
    if expected.shape != (len(texts), model.dim):
        return SelftestResult(False, f"golden embeddings shape {expected.shape} != "
                                     f"({len(texts)}, {model.dim})", [], threshold, {})
    actual, samples = _timed(model, texts, runs)
    values = [float(v) for v in cosines(actual, expected)]
    failed = [i for i, v in enumerate(values) if not v >= threshold]
    reason = (f"all {len(values)} golden texts have cosine >= {threshold}" if not failed else
              f"{len(failed)} of {len(values)} golden texts below {threshold}: index {failed}")
    return SelftestResult(not failed, reason, values, threshold, percentiles(samples), rss_mib())


def profile(model, lengths=(8, 16, 32, 64, 128, 256), runs: int = 10) -> list[dict]:
    """Measure batch-1 end-to-end latency for texts of about each token length."""
    rows = []
    for length in lengths:
        if length > model.max_seq_len:
            continue
        text = " ".join(["edge"] * max(length - 2, 1))
        tokens = len(model.tokenizer.encode(text).ids)
        model.embed([text])  # warm-up
        _, samples = _timed(model, [text], runs)
        rows.append({"tokens": tokens, **percentiles(samples)})
    return rows
