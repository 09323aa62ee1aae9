"""Counters and histograms, written out in the Prometheus text format (0.0.4) by hand."""

from __future__ import annotations

import bisect
import threading

__all__ = ["Histogram", "Metrics", "LATENCY_BUCKETS", "escape_label", "sample"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample(name: str, labels: dict | None, value) -> str:
    """Return one sample line: name{labels} value."""
    text = ",".join(f'{key}="{escape_label(val)}"' for key, val in (labels or {}).items())
    number = repr(float(value)) if not isinstance(value, int) else str(value)
    return f"{name}{{{text}}} {number}" if text else f"{name} {number}"


class Histogram:
    """Cumulative buckets, a sum and a count of observed seconds."""

    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        index = bisect.bisect_left(self.buckets, seconds)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += seconds
        self.count += 1

    def lines(self, name: str, labels: dict) -> list[str]:
        """Return the _bucket, _sum and _count lines."""
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            out.append(sample(f"{name}_bucket", {**labels, "le": repr(bound)}, running))
        out.append(sample(f"{name}_bucket", {**labels, "le": "+Inf"}, self.count))
        out.append(sample(f"{name}_sum", labels, self.total))
        out.append(sample(f"{name}_count", labels, self.count))
        return out


class Metrics:
    """Request counts and latencies per route, and inference time; gauges come from a callback."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.inference = Histogram()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self.lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, Histogram()).observe(seconds)

    def inferred(self, seconds: float) -> None:
        """Record the time of one model call."""
        with self.lock:
            self.inference.observe(seconds)

    def render(self, gauges: list[tuple[str, str, list[tuple[dict, float]]]]) -> str:
        """Return the exposition text; gauges is [(name, help, [(labels, value), ...])]."""
        out = ["# HELP edge_requests_total HTTP requests answered, by method, route and status.",
               "# TYPE edge_requests_total counter"]
        with self.lock:
            for (method, route, status), count in sorted(self.requests.items()):
                out.append(sample("edge_requests_total",
                                  {"method": method, "route": route, "status": str(status)},
                                  count))
            out += ["# HELP edge_request_seconds HTTP request latency, by route.",
                    "# TYPE edge_request_seconds histogram"]
            for route, histogram in sorted(self.latency.items()):
                out += histogram.lines("edge_request_seconds", {"route": route})
            out += ["# HELP edge_inference_seconds Time of one model call (tokenize, run, pool).",
                    "# TYPE edge_inference_seconds histogram"]
            out += self.inference.lines("edge_inference_seconds", {})
        for name, help_text, samples in gauges:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            out += [sample(name, labels, value) for labels, value in samples]
        return "\n".join(out) + "\n"
