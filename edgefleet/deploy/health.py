"""Health gate: the running service is ready and reproduces the bundle's golden outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["HealthResult", "Call", "NotReady", "wait_ready", "golden_check"]


@dataclass
class HealthResult:
    ok: bool
    reason: str
    min_cosine: float | None = None
    max_abs_diff: float | None = None  # classify and qa bundles: worst probability difference
    latency_ms: list[float] = field(default_factory=list)
    ready_after_s: float | None = None
    emulated: bool = False  # measured under emulation: latency is reported, never judged

    def summary(self) -> str:
        parts = [("healthy" if self.ok else "UNHEALTHY") + (f": {self.reason}" if self.reason else "")]
        if self.ready_after_s is not None:
            parts.append(f"ready after {self.ready_after_s:.1f} s")
        if self.min_cosine is not None:
            parts.append(f"golden min cosine {self.min_cosine:.5f}")
        if self.max_abs_diff is not None:
            parts.append(f"golden max difference {self.max_abs_diff:.5f}")
        if self.latency_ms:
            parts.append(f"golden request latency median {float(np.median(self.latency_ms)):.1f} ms (through SSH)")
        if self.emulated:
            parts.append("emulated: speed not judged")
        return ", ".join(parts)


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
    """Run each golden input on the service, one per request as the goldens were made.

    The route follows the bundle's task (/v1/embed, /v1/classify or /v1/qa), the comparison is
    the device selftest's (edge_runtime.golden). One input per request matters: dynamic INT8
    picks activation scales per call, so a padded batch of the same texts lands ~0.01 lower in
    cosine than the goldens' batch-1 vectors.
    """
    from edge_runtime import golden as goldens

    task = goldens.task_of(golden)
    # a target may run with a lower max_seq_len: goldens longer than that are not comparable
    status, info = call("/v1/info")
    if status == 200 and isinstance(info, dict):
        golden = goldens.fitting(golden, info.get("max_seq_len"))
        if not goldens.items(golden):
            return HealthResult(False, f"no golden input fits max_seq_len {info['max_seq_len']}")
    latencies, outputs = [], []
    for item in goldens.items(golden):
        route, payload = goldens.request(task, item)
        t0 = time.perf_counter()
        status, body = call(route, payload)
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            return HealthResult(False, f"{route} answered {status}: {body}", latency_ms=latencies)
        try:
            outputs.append(goldens.from_response(task, body))
        except (KeyError, IndexError, TypeError) as error:
            return HealthResult(False, f"{route} answered without {error}: {body}",
                                latency_ms=latencies)
    check = goldens.compare(golden, outputs)
    worst = check.worst if check.values else None
    reason = "" if check.passed else f"golden outputs differ: {check.reason}"
    if check.metric == "cosine":
        return HealthResult(check.passed, reason, min_cosine=worst, latency_ms=latencies)
    return HealthResult(check.passed, reason, max_abs_diff=worst, latency_ms=latencies)
