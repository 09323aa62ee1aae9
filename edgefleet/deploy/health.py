"""Health gate: the running service is ready and reproduces the bundle's golden outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["HealthResult", "Call", "NotReady", "wait_ready", "golden_verdict"]


@dataclass
class HealthResult:
    ok: bool
    reason: str
    min_cosine: float | None = None
    max_abs_diff: float | None = None  # classify and qa bundles: worst probability/score difference
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
        if self.max_abs_diff is not None:
            parts.append(f"golden max difference {self.max_abs_diff:.5f}")
        if self.p95_ms is not None:
            parts.append(f"p95 {self.p95_ms:.1f} ms on the device ({len(self.latency_ms)} requests)")
        if self.rss_mib is not None:
            parts.append(f"RSS {self.rss_mib:.0f} MiB")
        if self.temperature_c is not None:
            parts.append(f"hottest {self.temperature_c:.1f} °C")
        return ", ".join(parts + self.notes)


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


def golden_verdict(golden: dict, bodies: list) -> tuple[bool, str, float | None, str]:
    """Compare the service's answers (one response body per golden input, sent one per request
    as the goldens were made: dynamic INT8 picks activation scales per call) with the goldens.

    The comparison is the device selftest's (edge_runtime.golden), for the bundle's task.
    Return (ok, metric "cosine" or "abs_diff", worst value or None, reason when not ok).
    """
    from edge_runtime import golden as goldens

    task = goldens.task_of(golden)
    try:
        outputs = [goldens.from_response(task, body) for body in bodies]
    except (KeyError, IndexError, TypeError) as error:
        return False, "", None, f"{goldens.ROUTES[task]} answered without {error}"
    check = goldens.compare(golden, outputs)
    worst = check.worst if check.values else None
    return check.passed, check.metric, worst, "" if check.passed else f"golden outputs differ: {check.reason}"
