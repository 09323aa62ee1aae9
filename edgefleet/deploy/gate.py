"""The model-level part of the health gate: p95 latency, RSS and throttling, measured on the device.

A small stdlib-only probe runs on the device (python3 over SSH) and talks to the service on
loopback, so the latency it reports is the device's, not the SSH link's. It reads /v1/info
before, between and after its rounds, which gives the RSS and every throttle state the
runtime's thermal guard was in during the check. `judge` is pure: probe answer in, verdict out.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

__all__ = ["Budget", "ModelVerdict", "PROBE", "probe_command", "probe_request", "judge"]

# Runs on the device with only the stdlib. Reads one JSON line on stdin (port, token, route,
# payloads, rounds), prints one JSON document (round 0's answers in "outputs"). Never raises: errors are part of the answer.
PROBE = r'''
import http.client, json, sys, time
req = json.loads(sys.stdin.readline())
out = {"latency_ms": [], "outputs": [], "info": [], "errors": []}
def call(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", req["port"], timeout=req.get("timeout", 60))
    headers = {"Content-Type": "application/json"}
    if req.get("token"):
        headers["Authorization"] = "Bearer " + req["token"]
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw or b"{}")
    finally:
        conn.close()
def info():
    try:
        status, body = call("GET", "/v1/info")
        th = body.get("throttle") or {}
        temps = [z.get("temp_c") for z in (body.get("temperatures") or {}).values() if isinstance(z, dict)]
        out["info"].append({"status": status, "throttle": th.get("state"), "rss_bytes": body.get("rss_bytes"),
                            "temps": [t for t in temps if isinstance(t, (int, float))]})
    except Exception as exc:
        out["errors"].append("/v1/info: %s" % exc)
info()
for r in range(req["rounds"]):
    for payload in req["payloads"]:
        t0 = time.perf_counter()
        try:
            status, body = call("POST", req["route"], payload)
        except Exception as exc:
            out["errors"].append("%s: %s" % (req["route"], exc))
            continue
        took = (time.perf_counter() - t0) * 1000.0
        if status != 200:
            out["errors"].append("%s answered %s: %s" % (req["route"], status, str(body)[:200]))
            continue
        out["latency_ms"].append(took)
        if r == 0:
            out["outputs"].append(body)
    info()
print(json.dumps(out))
'''


def probe_command() -> str:
    """Return the shell command that runs the probe with the device's python3."""
    return "python3 -c " + shlex.quote(PROBE)


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


def judge(answer: dict, budget: Budget, expected_samples: int) -> ModelVerdict:
    """Judge a probe answer against the budget.

    A throttled (soft/hard at any sample) or emulated device is reported, not judged on
    speed; RSS is judged either way. Any request that failed fails the gate.
    """
    latencies = [float(x) for x in answer.get("latency_ms") or []]
    infos = [i for i in answer.get("info") or [] if isinstance(i, dict)]
    v = ModelVerdict(ok=True, outputs=answer.get("outputs") or [])
    v.failures += [str(e) for e in answer.get("errors") or []][:3]
    if len(latencies) < expected_samples and not v.failures:
        v.failures.append(f"only {len(latencies)} of {expected_samples} probe requests answered")
    if latencies:
        import numpy as np

        v.p95_ms = float(np.percentile(np.asarray(latencies), 95))
    rss = [i["rss_bytes"] for i in infos if isinstance(i.get("rss_bytes"), (int, float)) and i["rss_bytes"] > 0]
    if rss:
        v.rss_mib = max(rss) / 2**20
    temps = [t for i in infos for t in i.get("temps") or []]
    v.temperature_c = max(temps) if temps else None
    states = [i.get("throttle") for i in infos if i.get("throttle")]
    worst = max(states, key=lambda s: _SEVERITY.get(s, 0), default=None)
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
