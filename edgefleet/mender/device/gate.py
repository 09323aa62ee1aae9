"""The deploy's health gate, run on the device by the update module at ArtifactCommit.

The same steps as `edgefleet/deploy/gate.py`'s, without SSH: `/readyz` (crash-looping after two
restarts), then the goldens that fit the device's max_seq_len sent by the deploy's own probe
(`deploy/remote/probe.py`) and judged by the deploy's own judgement (`deploy/health.py`). Sent to
the device ahead of `module.py` (see `__init__.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from edgefleet.deploy.health import Budget, NotReady, golden_verdict, judge, wait_ready  # host only
from edgefleet.deploy.remote.probe import call, probe  # host only


def _service(name: str) -> tuple[int, str]:
    res = subprocess.run(["systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", name],
                         capture_output=True, text=True, timeout=30)
    values = dict(line.partition("=")[::2] for line in res.stdout.splitlines())
    restarts = values.get("NRestarts", "").strip()
    return int(restarts) if restarts.isdigit() else 0, values.get("ActiveState", "").strip()


def health_gate(gate: dict, unit: str, release_dir: str) -> tuple[bool, str, float | None]:
    """Return (ok, reason, p95 ms): /readyz, then golden outputs, p95 latency and RSS judged on this device.

    `gate`: the artifact spec's budgets and the service's port and token; `unit`: the service's
    unit; `release_dir`: the release being judged (its goldens, its edge_runtime and packages).
    """
    req = {"port": gate["port"], "token": gate["token"], "timeout": 60}
    sys.path[:0] = [os.path.join(release_dir, "payload"), os.path.join(release_dir, "site")]
    from edge_runtime import golden as goldens  # the release's own, as the device selftest uses

    restarts_before, polls = _service(unit)[0], 0

    def service_call(route: str, payload=None, timeout: float = 60.0):
        return call({**req, "timeout": timeout}, "GET" if payload is None else "POST", route, payload)

    def still_starting() -> bool:
        nonlocal polls
        polls += 1
        if polls % 3:
            return True
        restarts, state = _service(unit)
        if restarts - restarts_before >= 2:
            raise NotReady(f"the service is crash-looping (systemd restarted it {restarts - restarts_before} times)")
        return state in ("active", "activating")

    try:
        wait_ready(service_call, gate["ready_timeout_s"], still_starting, warmup_s=gate.get("warmup_s"))
    except NotReady as exc:
        return False, str(exc), None
    with open(os.path.join(release_dir, "bundle", "bundle.json")) as f:
        golden = json.load(f)["golden"]
    status, info = service_call("/v1/info", timeout=30)
    if status == 200 and isinstance(info, dict):
        golden = goldens.fitting(golden, info.get("max_seq_len"))
        if not goldens.items(golden):
            return False, f"no golden input fits the device's max_seq_len {info.get('max_seq_len')}", None
    task = goldens.task_of(golden)
    payloads = [goldens.request(task, item)[1] for item in goldens.items(golden)]
    rounds = gate["latency_rounds"]
    answer = probe({**req, "route": goldens.ROUTES[task], "payloads": payloads, "rounds": rounds})
    verdict = judge(answer, Budget(gate["latency_budget_ms"], gate["rss_budget_mib"], gate["emulated"]),
                    rounds * len(payloads))
    golden_ok, _, _, golden_why = golden_verdict(golden, verdict.outputs)
    failures = ([] if golden_ok or verdict.failures else [golden_why]) + verdict.failures
    return not failures, "; ".join(failures), verdict.p95_ms
