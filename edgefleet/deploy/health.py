"""Health gate: the running service is ready and reproduces the bundle's golden outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["HealthResult", "Call", "NotReady", "compare_golden", "wait_ready", "golden_verdict"]


@dataclass
class HealthResult:
    ok: bool
    reason: str
    min_cosine: float | None = None
    latency_ms: list[float] = field(default_factory=list)  # golden requests, measured on the device
    ready_after_s: float | None = None
    p95_ms: float | None = None
    rss_mib: float | None = None
    temperature_c: float | None = None
    throttled: str | None = None  # worst thermal state during the check, when not "ok"
    notes: list[str] = field(default_factory=list)  # what was measured but not judged, and why

    def summary(self) -> str:
        parts = [("healthy" if self.ok else "UNHEALTHY") + (f": {self.reason}" if self.reason else "")]
        if self.ready_after_s is not None:
            parts.append(f"ready after {self.ready_after_s:.1f} s")
        if self.min_cosine is not None:
            parts.append(f"golden min cosine {self.min_cosine:.5f}")
        if self.p95_ms is not None:
            parts.append(f"p95 {self.p95_ms:.1f} ms on the device ({len(self.latency_ms)} requests)")
        if self.rss_mib is not None:
            parts.append(f"RSS {self.rss_mib:.0f} MiB")
        if self.temperature_c is not None:
            parts.append(f"hottest {self.temperature_c:.1f} °C")
        return ", ".join(parts + self.notes)


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


def golden_verdict(golden: dict, got: list[list[float]]) -> tuple[bool, float | None, str]:
    """Compare the service's answers to the golden texts (sent one per request, as the goldens
    were made: dynamic INT8 picks activation scales per call, so a padded batch lands ~0.01 lower).

    Return (ok, min cosine, reason when not ok).
    """
    ok, cosines = compare_golden(golden["embeddings"], got, golden["min_cosine"])
    min_cos = min(cosines) if cosines else None
    reason = "" if ok else (
        f"golden outputs differ (min cosine {min_cos}, need >= {golden['min_cosine']})" if cosines
        else f"golden outputs have the wrong shape ({len(got)} answers for {len(golden['embeddings'])} texts)"
    )
    return ok, min_cos, reason
