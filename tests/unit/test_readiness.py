"""One definition of a healthy device: the runtime's /readyz answer, read by one parser for
`status` and the deploy's health gate."""

from __future__ import annotations

import pytest

from edgefleet.deploy.health import NotReady, parse_readiness, wait_ready

HOT = "too hot: 99.0 °C above the hard limit 85 °C, refusing inference until below 75 °C"


@pytest.mark.parametrize("status, body, serving, state, reason", [
    (200, {"status": "ready", "state": "ready", "detail": "golden ok", "throttle": "ok"}, True, "ready", "golden ok"),
    (200, {"status": "ready", "state": "ready", "throttle": "soft"}, True, "ready", ""),  # slower, serving
    (200, {}, True, "ready", ""),
    # a runtime from before /readyz said so: ready, yet its thermal guard refuses work
    (200, {"status": "ready", "state": "ready", "throttle": "hard"}, False, "too_hot",
     "refusing inference: thermal guard at its hard limit"),
    (503, {"state": "too_hot", "reason": HOT, "error": "not ready: " + HOT}, False, "too_hot", HOT),
    (503, {"state": "overloaded", "reason": "inference queue full (16) for 12 s"}, False, "overloaded",
     "inference queue full (16) for 12 s"),
    (503, {"state": "failed", "error": "not ready: 2 of 8 golden texts below 0.999"}, False, "failed",
     "2 of 8 golden texts below 0.999"),
    (503, {"state": "loading", "error": "not ready: loading"}, False, "loading", "loading"),
    (503, {"error": "too many connections"}, False, "unknown", "too many connections"),
    (500, "not json", False, "unknown", "/readyz answered 500"),
    (None, {}, False, "unreachable", "/readyz: no answer"),
])
def test_parse_readiness(status, body, serving, state, reason):
    got = parse_readiness(status, body)
    assert (got.serving, got.state, got.reason) == (serving, state, reason)


@pytest.mark.parametrize("body, match", [
    ({"state": "too_hot", "reason": HOT}, "refusing inference: too hot: 99.0"),
    ({"state": "overloaded", "reason": "inference queue full (16) for 12 s"}, "refusing inference: inference queue"),
])
def test_gate_stops_at_once_on_a_refusing_device(body, match):
    """A device refusing inference fails the gate at once, with the runtime's own reason."""
    with pytest.raises(NotReady, match=match):
        wait_ready(lambda path, timeout=10: (503, body), timeout_s=0.3, poll_s=0.01)


BUILDING = {"state": "building_engine", "reason": "building engine: TensorRT builds the engine for model 1a2b3c4d5e6f",
            "error": "not ready: building engine: TensorRT builds the engine for model 1a2b3c4d5e6f"}


def test_building_engine_is_not_ready_and_not_failed():
    got = parse_readiness(503, BUILDING)
    assert (got.serving, got.state, got.reason) == (False, "building_engine", BUILDING["reason"])


def _playing(answers):
    """A `Call` that gives each answer for its number of seconds, then the next (the last for ever)."""
    start = [None]

    def call(path, timeout=10):
        import time
        start[0] = start[0] or time.monotonic()
        elapsed = time.monotonic() - start[0]
        for seconds, answer in answers:
            if elapsed < seconds:
                return answer
            elapsed -= seconds
        return answers[-1][1]
    return call


def test_the_gate_waits_up_to_warmup_while_the_engine_builds():
    """An engine build longer than ready_timeout_s, shorter than warmup_s: ready, not failed."""
    # (margins for a loaded CI host: a poll that wakes late must not end the wait)
    waited = wait_ready(_playing([(1.5, (503, BUILDING)), (0.2, (503, {"state": "loading"})),
                                  (1, (200, {"state": "ready"}))]), timeout_s=1.0, warmup_s=6, poll_s=0.02)
    assert 1.5 <= waited < 5


def test_an_engine_still_building_after_warmup_fails_the_gate_saying_so():
    with pytest.raises(NotReady, match=r"still building the TensorRT engine after 0 s \(health.warmup_s 0.3 s\): "
                                       "building engine: TensorRT builds"):
        wait_ready(_playing([(60, (503, BUILDING))]), timeout_s=5, warmup_s=0.3, poll_s=0.02)
