"""Run the health gate on a device: readiness, then the model judged on the device by the probe
(`remote/probe.py`); the judgement itself is pure and lives in health.py."""

from __future__ import annotations

import json
import shlex

from ..render import UNIT_NAME
from ..transport import http_json_over_ssh
from .device import DeployError, Device
from .health import (
    Budget,
    Call,
    HealthResult,
    NotReady,
    golden_verdict,
    judge,
    probe_answer,
    probe_request,
    wait_ready,
)
from .providers import engine_note, provider_verdict
from .regression import regression_verdict
from .remote import source

__all__ = ["service_call", "health_gate", "release_golden", "probe_command"]


def service_call(dev: Device) -> Call:
    """Return a `Call` to the runtime service on the device, through the SSH connection."""
    port = dev.target.settings.runtime.port
    return lambda path, payload=None, timeout=120.0: http_json_over_ssh(dev.transport, port, path, payload, timeout)


def _journal(dev: Device, lines: int = 25) -> str:
    """Return the last `lines` of the service's latest run (not the lines of the release it replaced)."""
    res = dev.run(f"i=$(systemctl show -p InvocationID --value {UNIT_NAME} 2>/dev/null); "
                  f"if [ -n \"$i\" ]; then journalctl -n {lines} --no-pager -o cat _SYSTEMD_INVOCATION_ID=\"$i\"; "
                  f"else journalctl -u {UNIT_NAME} -n {lines} --no-pager -o cat; fi", "read the journal", warn=True)
    return res.stdout.strip()


def _service(dev: Device) -> tuple[int, str]:
    """Return the service's automatic restarts so far and its state (active, activating, failed, ...):
    one `systemctl` for both (the gate asks while the model loads, often on many devices at once)."""
    res = dev.run(f"systemctl show -p NRestarts -p ActiveState {UNIT_NAME}", "query the service", privileged=False,
                  warn=True)
    values = dict(line.partition("=")[::2] for line in res.stdout.splitlines())
    restarts = values.get("NRestarts", "").strip()
    return int(restarts) if restarts.isdigit() else 0, values.get("ActiveState", "").strip()


def _probe(dev: Device, route: str, payloads: list[dict], rounds: int) -> dict:
    """Run the model probe on the device (see gate.PROBE) and return its answer."""
    s = dev.target.settings
    request = probe_request(s.runtime.port, route, payloads, rounds, s.runtime.token)
    res = dev.run(probe_command(), "run the model probe", privileged=False, warn=True, text=request)
    if res.exited != 0:
        return {"errors": [f"the probe failed on the device (exit {res.exited}): {res.stderr.strip()[-300:]}"]}
    try:
        return json.loads(res.stdout)
    except ValueError:
        return {"errors": [f"the probe printed no JSON: {res.stdout[:200]!r}"]}


def health_gate(dev: Device, golden: dict, judge_model: bool = True,
                baseline_p95_ms: float | None = None) -> HealthResult:
    """Wait for /readyz, then judge the model on the device: golden outputs, p95 latency, RSS, throttling,
    and the p95 against `baseline_p95_ms` (the committed release's, from state.json).

    A service systemd keeps restarting is judged crash-looping after two restarts, not waited for.
    `judge_model` False: readiness only (a re-run that changed nothing).
    """
    s = dev.target.settings
    # a no-op re-run finds the service ready at once: it spares the round trip unless it waits
    restarts_before = _service(dev)[0] if judge_model else None
    polls = 0

    def still_starting() -> bool:
        nonlocal restarts_before, polls
        if restarts_before is None:
            restarts_before = _service(dev)[0]
        polls += 1
        if polls % 3:
            return True
        now, state = _service(dev)
        crashes = now - restarts_before
        if crashes >= 2:
            raise NotReady(f"the service is crash-looping (systemd restarted it {crashes} times)")
        return state in ("active", "activating")

    try:
        waited = wait_ready(service_call(dev), s.health.ready_timeout_s, still_starting, warmup_s=s.health.warmup_s)
    except NotReady as exc:
        return HealthResult(False, f"{exc}; journal:\n{_journal(dev)}")
    if not judge_model:
        return HealthResult(True, "", ready_after_s=waited)
    from edge_runtime import golden as goldens  # numpy: only when the model is judged

    info = _service_info(dev)
    golden, unfit = _fitting(golden, info)
    if unfit:
        return HealthResult(False, unfit, ready_after_s=waited)
    provider_failures, provider_warnings = provider_verdict(
        info.get("providers"), list(s.providers), list(s.require_providers))
    provider_warnings += engine_note(info.get("providers"))
    task = goldens.task_of(golden)
    requests = [goldens.request(task, item) for item in goldens.items(golden)]
    rounds = s.health.latency_rounds
    answer = _probe(dev, goldens.ROUTES[task], [payload for _, payload in requests], rounds)
    budget = Budget(s.health.latency_budget_ms, s.health.rss_budget_mib, s.emulated)
    verdict = judge(answer, budget, rounds * len(requests))
    golden_ok, metric, worst, golden_why = golden_verdict(golden, verdict.outputs)
    failures = provider_failures + ([] if golden_ok or verdict.failures else [golden_why]) + verdict.failures
    regressed, regression_note = regression_verdict(
        verdict.p95_ms, baseline_p95_ms, s.health.max_regression, s.health.regression_min_ms,
        judged=not s.emulated and not verdict.throttled,
        why_not="emulated" if s.emulated else f"throttled ({verdict.throttled})")
    failures += [regressed] if regressed else []
    return HealthResult(not failures, "; ".join(failures),
                        min_cosine=worst if metric == "cosine" else None,
                        max_abs_diff=worst if metric == "abs_diff" else None,
                        latency_ms=probe_answer(answer)[0].latency_ms, ready_after_s=waited,
                        p95_ms=verdict.p95_ms, rss_mib=verdict.rss_mib, temperature_c=verdict.temperature_c,
                        throttled=verdict.throttled, notes=provider_warnings + verdict.notes
                        + ([regression_note] if regression_note else []))


def _service_info(dev: Device) -> dict:
    """Return the service's /v1/info, or {} when it does not answer with one."""
    status, info = service_call(dev)("/v1/info", timeout=30)
    return info if status == 200 and isinstance(info, dict) else {}


def _fitting(golden: dict, info: dict) -> tuple[dict, str]:
    """Return the goldens that fit the device's max_seq_len (longer ones are truncated there, so
    their outputs cannot match), and a reason when none does."""
    from edge_runtime import golden as goldens

    if not info:
        return golden, ""
    max_seq_len = info.get("max_seq_len")
    if max_seq_len is not None and (not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool)
                                    or max_seq_len < 1):
        return golden, f"/v1/info max_seq_len is {max_seq_len!r:.60}, not a whole number of tokens"
    fitted = goldens.fitting(golden, max_seq_len)
    if not goldens.items(fitted):
        return fitted, f"no golden input fits the device's max_seq_len {info.get('max_seq_len')}"
    return fitted, ""


def release_golden(dev: Device, release_id: str) -> dict:
    """Return the golden outputs of a release on the device (its bundle.json)."""
    path = dev.path("releases", release_id, "bundle", "bundle.json")
    res = dev.run(f"cat {shlex.quote(path)}", f"read {path}", privileged=False)
    try:
        return json.loads(res.stdout)["golden"]
    except (ValueError, KeyError, TypeError):
        raise DeployError(f"{dev.target.name}: {path} has no golden outputs") from None


def probe_command() -> str:
    """Return the shell command that runs the probe with the device's python3."""
    return "python3 -c " + shlex.quote(source("probe"))
