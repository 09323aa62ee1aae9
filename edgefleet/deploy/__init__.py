"""Deploy a bundle and the runtime to one device: facts -> plan -> apply -> health gate -> commit or roll back."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..inventory import Target
from ..paths import repo_root
from ..render import UNIT_NAME, check_rendered, render_target
from ..ssh import connect, http_json_over_ssh
from .apply import DeployError, Device, apply_plan, device_lock, record_state, restart_service, switch_current
from .env import build_target_env
from .health import Call, HealthResult, NotReady, golden_check, wait_ready
from .plan import DeployPlan, facts_command, make_plan, parse_facts
from .release import Release, make_release

__all__ = ["DeployResult", "DeployError", "prepare_release", "deploy", "service_call"]


@dataclass
class DeployResult:
    target: str
    release_id: str
    previous: str | None
    changed: bool
    health: HealthResult | None = None
    rolled_back: bool = False
    plan: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.health is None or self.health.ok


def prepare_release(target: Target, bundle_dir: Path, build_dir: Path) -> Release:
    """Render, check and collect everything the device gets, on the host."""
    rendered = render_target(target)
    check_rendered(rendered)
    env = build_target_env(target, repo_root() / "payload" / "requirements.txt", build_dir / "device-envs")
    return make_release(target.name, bundle_dir, repo_root() / "payload", rendered, env)


def service_call(dev: Device) -> Call:
    """Return a `Call` to the runtime service on the device, through the SSH connection."""
    port = dev.target.settings.runtime.port
    return lambda path, payload=None, timeout=120.0: http_json_over_ssh(dev.c, port, path, payload, timeout)


def _service_state(dev: Device) -> str:
    return dev.run(f"systemctl is-active {UNIT_NAME}", "query the service", warn=True).stdout.strip()


def _journal(dev: Device, lines: int = 25) -> str:
    res = dev.run(f"journalctl -u {UNIT_NAME} -n {lines} --no-pager -o cat", "read the journal", warn=True)
    return res.stdout.strip()


def health_gate(dev: Device, golden: dict, check_golden: bool = True) -> HealthResult:
    """Wait for /readyz, then check the golden outputs on the running service."""
    timeout = dev.target.settings.health.ready_timeout_s
    polls = {"n": 0}

    def still_starting() -> bool:
        polls["n"] += 1
        return polls["n"] % 5 or _service_state(dev) in ("active", "activating")

    call = service_call(dev)
    try:
        waited = wait_ready(call, timeout, still_starting)
    except NotReady as exc:
        return HealthResult(False, f"{exc}; journal:\n{_journal(dev)}")
    if not check_golden:
        return HealthResult(True, "", ready_after_s=waited)
    result = golden_check(call, golden)
    result.ready_after_s = waited
    return result


def deploy(target: Target, bundle_dir: Path, build_dir: Path, dry_run: bool = False, log=print) -> DeployResult:
    """Deploy `bundle_dir` to `target` and gate on health; roll back by itself on failure."""
    t0 = time.monotonic()
    release = prepare_release(target, bundle_dir, build_dir)
    golden = json.loads((bundle_dir / "bundle.json").read_text())["golden"]
    conn = connect(target)
    try:
        dev = Device(conn, target)
        facts = parse_facts(dev.run(facts_command(target), "gather facts", privileged=False).stdout)
        plan: DeployPlan = make_plan(target, release, facts)
        lines = plan.describe()
        for line in lines:
            log(line)
        result = DeployResult(target.name, release.release_id, facts.current, not plan.nothing_to_do, plan=lines)
        if dry_run:
            return result
        if plan.nothing_to_do:
            result.health = health_gate(dev, golden, check_golden=False)
            log(f"  {result.health.summary()}")
            result.seconds = time.monotonic() - t0
            return result
        owner = f"{socket.gethostname()} pid {os.getpid()} {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
        with device_lock(dev, owner):
            apply_plan(dev, plan, release, log)
            log("  health gate: waiting for /readyz, then the golden outputs ...")
            result.health = health_gate(dev, golden)
            log(f"  {result.health.summary()}")
            # back to the last release that passed its gate (not merely the one that was current)
            good = facts.committed if facts.committed in facts.releases - {release.release_id} else None
            if not result.health.ok and good:
                log(f"  rolling back to {good}")
                switch_current(dev, good)
                restart_service(dev)
                result.rolled_back, result.previous = True, good
            record_state(dev, {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "release": release.release_id,
                "previous": facts.current,
                "healthy": result.health.ok,
                "reason": result.health.reason[:300],
                "active": result.previous if result.rolled_back else release.release_id,
            })
        result.seconds = time.monotonic() - t0
        return result
    finally:
        conn.close()
