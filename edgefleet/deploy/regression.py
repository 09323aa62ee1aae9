"""The regression gate, pure: a new release's p95 on the device against the one it replaces.

state.json keeps each gated release's p95 (the gate's probe, on that device). A release whose
p95 is worse than the committed release's by more than `health.max_regression` (a fraction)
and by more than `health.regression_min_ms` (the probe's noise on a fast model) fails its gate.
Emulated and throttled devices report the comparison; it is never judged there.
"""

from __future__ import annotations

from .device import Device
from .record import read_state

__all__ = ["committed_p95", "baseline_from_state", "regression_verdict"]


def baseline_from_state(state, committed: str | None) -> float | None:
    """Return the p95 (ms) recorded for `committed` when it passed its gate, the newest; else None."""
    if not committed or not isinstance(state, dict) or not isinstance(state.get("history"), list):
        return None
    for entry in reversed(state["history"]):
        if not isinstance(entry, dict) or entry.get("release") != committed or entry.get("healthy") is not True:
            continue
        p95 = entry.get("p95_ms")
        if isinstance(p95, (int, float)) and not isinstance(p95, bool) and p95 > 0:
            return float(p95)
    return None


def committed_p95(dev: Device, committed: str | None) -> float | None:
    """Return the committed release's recorded p95 from the device's state.json (None: not known),
    read as every deploy reads it (shape-checked, recovered from its backup when broken)."""
    if not committed:
        return None
    return baseline_from_state({"history": list(read_state(dev).state.history)}, committed)


def regression_verdict(p95_ms: float | None, baseline_ms: float | None, max_regression: float | None,
                       min_ms: float, judged: bool, why_not: str = "") -> tuple[str | None, str | None]:
    """Return (failure, note): the failure when the release regressed and speed is judged here."""
    if p95_ms is None or baseline_ms is None or max_regression is None:
        return None, None
    ratio = p95_ms / baseline_ms
    text = (f"p95 {p95_ms:.1f} ms vs {baseline_ms:.1f} ms for the release it replaces "
            f"({ratio - 1:+.0%}, limit +{max_regression:.0%})")
    regressed = ratio > 1 + max_regression and p95_ms - baseline_ms > min_ms
    if not judged:
        return None, f"regression {'seen' if regressed else 'none'}: {text}; reported, not judged ({why_not})"
    if regressed:
        return f"regression: {text}", None
    return None, None
