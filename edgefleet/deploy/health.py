"""The health gate's judgement, pure: readiness waits, golden outputs, and the probe's answer
(p95 latency, RSS, throttling, measured on the device) judged against the board's budget."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["HealthResult", "Call", "NotReady", "Readiness", "parse_readiness", "wait_ready",
           "golden_verdict", "Budget", "ModelVerdict", "judge", "probe_request", "probe_answer", "ProbeAnswer"]


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
# over SSH in deploys (edgefleet.transport.http_json_over_ssh), a fake in unit tests.
Call = Callable[..., tuple[int, dict]]


class NotReady(Exception):
    """The service did not become ready; the message says what it last answered."""


@dataclass(frozen=True)
class Readiness:
    """Whether a device's runtime takes inference now, from its /readyz answer; the one
    definition of healthy that `status` and the deploy's gate share.

    state: ready | loading | building_engine | failed | too_hot | overloaded (the runtime's own
    words), unreachable (no answer) or unknown (an answer we cannot read). building_engine: TensorRT
    builds its engine (minutes on a Jetson's first start): not ready, not failed either.
    """

    serving: bool
    state: str
    reason: str


def parse_readiness(status: int | None, body: object) -> Readiness:
    """Read one /readyz answer (status None: no answer); anything unexpected is not serving."""
    if status is None:
        return Readiness(False, "unreachable", "/readyz: no answer")
    if not isinstance(body, dict):
        body = {}
    state = body.get("state")
    state = state if isinstance(state, str) and state else None
    said = body.get("reason") or body.get("detail") or str(body.get("error") or "").removeprefix("not ready: ")
    reason = str(said)[:300]
    if status == 200:
        if body.get("throttle") == "hard":  # a runtime that answered 200 while refusing work
            return Readiness(False, "too_hot", "refusing inference: thermal guard at its hard limit")
        return Readiness(True, "ready", reason)
    if status == 503 and state is not None:
        return Readiness(False, state, reason or state)
    return Readiness(False, "unknown", reason or f"/readyz answered {status}")


# The runtime says these itself: waiting for the gate's timeout would not change them
_SETTLED = ("failed", "too_hot", "overloaded")
BUILDING = "building_engine"


def wait_ready(call: Call, timeout_s: float, still_starting=lambda: True, poll_s: float = 1.0,
               warmup_s: float | None = None) -> float:
    """Poll `/readyz` until the service takes inference; return seconds waited.

    `still_starting()` False stops early; so does a service that says it failed its selftest
    or refuses inference (too hot, queue full for long). While it says building_engine, the wait
    runs up to `warmup_s` from the start (the board's `health.warmup_s`), then `timeout_s` more
    once the build is over; an engine still building after `warmup_s` fails.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = call("/readyz", timeout=10)
        except (OSError, ValueError) as exc:  # not listening yet, or a garbled answer
            status, body = None, {}
            last = str(exc) or type(exc).__name__
        ready = parse_readiness(status, body)
        if ready.serving:
            return time.monotonic() - start
        if not isinstance(body, dict):  # device data: a JSON object or nothing we act on
            body = {"unexpected": f"{body!r:.120}"}
        if status is not None:
            last = f"/readyz {status} {body}"
        if ready.state == "failed":  # loaded, but the selftest failed: waiting won't help
            raise NotReady(f"service is up but not ready: {ready.reason}")
        if ready.state in _SETTLED:
            raise NotReady(f"service is up but refusing inference: {ready.reason}")
        if ready.state == BUILDING:
            now = time.monotonic()
            limit = timeout_s if warmup_s is None else warmup_s
            if now - start >= limit:
                raise NotReady(f"still building the TensorRT engine after {now - start:.0f} s "
                               f"(health.warmup_s {limit:g} s): {ready.reason}")
            deadline = max(deadline, now + timeout_s)
            last = f"{BUILDING}: {ready.reason}"
        if not still_starting():
            raise NotReady(f"service stopped before it was ready (last: {last})")
        time.sleep(poll_s)
    raise NotReady(f"not ready after {time.monotonic() - start:.0f} s (last: {last})")


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
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # device data
        return False, "", None, f"{goldens.ROUTES[task]} answered without {error!s:.120}"
    try:
        check = goldens.compare(golden, outputs)
    except (TypeError, ValueError) as error:  # numbers of the wrong shape from the device
        return False, "", None, f"{goldens.ROUTES[task]} answered outputs of the wrong shape: {error!s:.120}"
    worst = check.worst if check.values else None
    return check.passed, check.metric, worst, "" if check.passed else f"golden outputs differ: {check.reason}"


def probe_request(port: int, route: str, payloads: list[dict], rounds: int, token: str | None) -> str:
    """Return the probe's stdin line (the token travels here, never on a command line)."""
    return json.dumps({"port": port, "route": route, "payloads": list(payloads), "rounds": rounds,
                       "token": token}) + "\n"


@dataclass(frozen=True)
class Budget:
    """What the target allows: p95 latency (ms) and RSS (MiB); None means not judged."""

    p95_ms: float | None
    rss_mib: float | None
    emulated: bool = False


@dataclass
class ModelVerdict:
    """What the probe measured and whether the model passes; `notes` say what was not judged."""

    ok: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    p95_ms: float | None = None
    rss_mib: float | None = None
    temperature_c: float | None = None
    throttled: str | None = None  # the worst throttle state seen, when not "ok"
    outputs: list = field(default_factory=list)  # round 0's response bodies, one per golden input

    @property
    def speed_judged(self) -> bool:
        return not any(n.startswith(("emulated", "throttled", "no latency budget")) for n in self.notes)


_SEVERITY = {"ok": 0, "soft": 1, "hard": 2}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def probe_answer(answer) -> tuple[ProbeAnswer, list[str]]:
    """Check the shape of the probe's answer (device data); return it typed and what was wrong.

    A wrong shape is a failure of the gate that says which field, never an exception.
    """
    wrong: list[str] = []
    if not isinstance(answer, dict):
        return ProbeAnswer(), [f"the probe answered a JSON {type(answer).__name__}, not an object"]

    def listed(key: str) -> list:
        value = answer.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            wrong.append(f"the probe's {key} is {value!r:.60}, not a list")
            return []
        return value

    latencies = listed("latency_ms")
    if not all(_number(x) for x in latencies):
        wrong.append(f"the probe's latency_ms holds non-numbers: {latencies!r:.80}")
        latencies = []
    infos = []
    for i, info in enumerate(listed("info")):
        if not isinstance(info, dict):
            wrong.append(f"the probe's info[{i}] is {info!r:.60}, not an object")
            continue
        rss, temps, throttle = info.get("rss_bytes"), info.get("temps") or [], info.get("throttle")
        if rss is not None and not _number(rss):
            wrong.append(f"the probe's info[{i}].rss_bytes is {rss!r:.60}, not a number")
            rss = None
        if not isinstance(temps, list) or not all(_number(t) for t in temps):
            wrong.append(f"the probe's info[{i}].temps is {temps!r:.60}, not a list of numbers")
            temps = []
        if throttle is not None and not isinstance(throttle, str):
            wrong.append(f"the probe's info[{i}].throttle is {throttle!r:.60}, not a string")
            throttle = None
        infos.append(ProbeInfo(rss, [float(t) for t in temps], throttle))
    errors = listed("errors")
    return ProbeAnswer([float(x) for x in latencies], infos, listed("outputs"), [str(e) for e in errors]), wrong


@dataclass
class ProbeInfo:
    """One /v1/info sample the probe took: the service's RSS, thermal zones, throttle state."""

    rss_bytes: float | None = None
    temps: list[float] = field(default_factory=list)
    throttle: str | None = None


@dataclass
class ProbeAnswer:
    """What the probe measured on the device, shape-checked (see `probe_answer`)."""

    latency_ms: list[float] = field(default_factory=list)
    info: list[ProbeInfo] = field(default_factory=list)
    outputs: list = field(default_factory=list)  # round 0's response bodies, one per golden input
    errors: list[str] = field(default_factory=list)


def judge(answer, budget: Budget, expected_samples: int) -> ModelVerdict:
    """Judge a probe answer (as the device printed it, any JSON) against the budget.

    A throttled (soft/hard at any sample) or emulated device is reported, not judged on
    speed; RSS is judged either way. Any request that failed fails the gate, as does an
    answer of the wrong shape.
    """
    probe, wrong = probe_answer(answer)
    latencies = probe.latency_ms
    v = ModelVerdict(ok=True, outputs=probe.outputs)
    v.failures += wrong[:3] + probe.errors[:3]
    if len(latencies) < expected_samples and not v.failures:
        v.failures.append(f"only {len(latencies)} of {expected_samples} probe requests answered")
    if latencies:
        import numpy as np

        v.p95_ms = float(np.percentile(np.asarray(latencies), 95))
    rss = [i.rss_bytes for i in probe.info if i.rss_bytes is not None and i.rss_bytes > 0]
    if rss:
        v.rss_mib = max(rss) / 2**20
    temps = [t for i in probe.info for t in i.temps]
    v.temperature_c = max(temps) if temps else None
    states = [i.throttle for i in probe.info if i.throttle]
    worst = max(states, key=lambda s: _SEVERITY.get(str(s), 0), default=None)
    if worst and worst != "ok":
        v.throttled = worst
    if budget.rss_mib is not None:
        if v.rss_mib is None:
            v.failures.append("the service did not report its RSS (/v1/info rss_bytes)")
        elif v.rss_mib > budget.rss_mib:
            v.failures.append(f"RSS {v.rss_mib:.0f} MiB over the budget of {budget.rss_mib:.0f} MiB")
    if budget.emulated:
        v.notes.append("emulated: latency reported, not judged")
    elif v.throttled:
        v.notes.append(f"throttled ({v.throttled}) during the check: latency reported, not judged")
    elif budget.p95_ms is None:
        v.notes.append("no latency budget: latency reported, not judged")
    elif v.p95_ms is not None and v.p95_ms > budget.p95_ms:
        v.failures.append(f"p95 latency {v.p95_ms:.1f} ms over the budget of {budget.p95_ms:g} ms")
    v.ok = not v.failures
    return v
