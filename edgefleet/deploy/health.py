"""Health gate: the running service is ready and reproduces the bundle's golden outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["HealthResult", "Call", "NotReady", "compare_golden", "wait_ready", "golden_check"]


@dataclass
class HealthResult:
    ok: bool
    reason: str
    min_cosine: float | None = None
    latency_ms: list[float] = field(default_factory=list)
    ready_after_s: float | None = None
    emulated: bool = False  # measured under emulation: latency is reported, never judged

    def summary(self) -> str:
        parts = [("healthy" if self.ok else "UNHEALTHY") + (f": {self.reason}" if self.reason else "")]
        if self.ready_after_s is not None:
            parts.append(f"ready after {self.ready_after_s:.1f} s")
        if self.min_cosine is not None:
            parts.append(f"golden min cosine {self.min_cosine:.5f}")
        if self.latency_ms:
            parts.append(f"embed latency median {float(np.median(self.latency_ms)):.1f} ms (through SSH)")
        if self.emulated:
            parts.append("emulated: speed not judged")
        return ", ".join(parts)


def compare_golden(expected: list[list[float]], got: list[list[float]], min_cosine: float) -> tuple[bool, list[float]]:
    """Return whether every row of `got` is within `min_cosine` of `expected`, and the cosines."""
    a = np.asarray(expected, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    if a.shape != b.shape:
        return False, []
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.where(norms == 0, 1, norms)
    return bool((cosines >= min_cosine).all()), [float(c) for c in cosines]


# call(path, payload=None, timeout=...) -> (status, body): the one seam to the service,
# over SSH in deploys (edgefleet.ssh.http_json_over_ssh), a fake in unit tests.
Call = Callable[..., tuple[int, dict]]


class NotReady(Exception):
    """The service did not become ready; the message says what it last answered."""


def wait_ready(call: Call, timeout_s: float, still_starting=lambda: True, poll_s: float = 1.0) -> float:
    """Poll `/readyz` until 200; return seconds waited. `still_starting()` False stops early."""
    start = time.monotonic()
    deadline = start + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = call("/readyz", timeout=10)
        except (OSError, ValueError) as exc:  # not listening yet, or a garbled answer
            status, body = None, {}
            last = str(exc) or type(exc).__name__
        if status == 200:
            return time.monotonic() - start
        if status is not None:
            last = f"/readyz {status} {body}"
        if body.get("state") == "failed":  # loaded, but the selftest failed: waiting won't help
            raise NotReady(f"service is up but not ready: {body.get('error')}")
        if not still_starting():
            raise NotReady(f"service stopped before it was ready (last: {last})")
        time.sleep(poll_s)
    raise NotReady(f"not ready after {timeout_s:.0f} s (last: {last})")


def golden_check(call: Call, golden: dict) -> HealthResult:
    """Embed each golden text on the service, one per request as the goldens were made.

    One text per request matters: dynamic INT8 picks activation scales per call, so a padded
    batch of the same texts lands ~0.01 lower in cosine than the goldens' batch-1 vectors.
    """
    latencies, result = [], []
    for text in golden["texts"]:
        t0 = time.perf_counter()
        status, body = call("/v1/embed", {"texts": [text]})
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            return HealthResult(False, f"/v1/embed answered {status}: {body}", latency_ms=latencies)
        result.extend(body["embeddings"])
    ok, cosines = compare_golden(golden["embeddings"], result, golden["min_cosine"])
    min_cos = min(cosines) if cosines else None
    reason = "" if ok else (
        f"golden outputs differ (min cosine {min_cos}, need >= {golden['min_cosine']})" if cosines
        else "golden outputs have the wrong shape"
    )
    return HealthResult(ok, reason, min_cosine=min_cos, latency_ms=latencies)
