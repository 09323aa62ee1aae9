"""Deploy a bundle and the runtime to one device: facts -> plan -> apply -> health gate -> commit or roll back."""

from __future__ import annotations

import json
import os
import shlex
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
from .env import DeviceEnv, build_target_env
from .health import Call, HealthResult, NotReady, golden_check, wait_ready
from .plan import DeployPlan, facts_command, make_plan, parse_facts
from .release import Release, make_release

__all__ = ["DeployResult", "DeployError", "prepare_release", "deploy", "revert", "rollback", "previous_good",
           "service_call"]


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
    temperature_c: float | None = None  # hottest thermal zone after the gate, when the device has any

    @property
    def ok(self) -> bool:
        return self.health is None or self.health.ok


def prepare_release(target: Target, bundle_dir: Path, build_dir: Path, env: DeviceEnv | None = None) -> Release:
    """Render, check and collect everything the device gets, on the host (`env`: packages resolved already)."""
    rendered = render_target(target)
    check_rendered(rendered, cache_dir=build_dir / "checked")
    if env is None:
        env = build_target_env(target, repo_root() / "payload" / "requirements.txt", build_dir / "device-envs")
    return make_release(target.name, bundle_dir, repo_root() / "payload", rendered, env)


def service_call(dev: Device) -> Call:
    """Return a `Call` to the runtime service on the device, through the SSH connection."""
    port = dev.target.settings.runtime.port
    return lambda path, payload=None, timeout=120.0: http_json_over_ssh(dev.c, port, path, payload, timeout)


def _service_state(dev: Device) -> str:
    return dev.run(f"systemctl is-active {UNIT_NAME}", "query the service", privileged=False, warn=True).stdout.strip()


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
    emulated = dev.target.settings.emulated
    try:
        waited = wait_ready(call, timeout, still_starting)
    except NotReady as exc:
        return HealthResult(False, f"{exc}; journal:\n{_journal(dev)}", emulated=emulated)
    if not check_golden:
        return HealthResult(True, "", ready_after_s=waited, emulated=emulated)
    result = golden_check(call, golden)
    result.ready_after_s, result.emulated = waited, emulated
    return result


def _hottest(dev: Device) -> float | None:
    """Return the hottest temperature /v1/info reports, or None (no zones, or no answer)."""
    try:
        status, info = service_call(dev)("/v1/info", timeout=10)
    except (OSError, ValueError):
        return None
    temps = [z.get("temp_c") for z in (info.get("temperatures") or {}).values() if isinstance(z, dict)]
    temps = [t for t in temps if isinstance(t, (int, float))]
    return max(temps) if status == 200 and temps else None


def _owner() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} {datetime.now(timezone.utc).isoformat(timespec='seconds')}"


def deploy(target: Target, bundle_dir: Path, build_dir: Path, dry_run: bool = False, log=print,
           release: Release | None = None) -> DeployResult:
    """Deploy `bundle_dir` to `target` and gate on health; roll back by itself on failure.

    `release`: prepared already for this target (a rollout prepares all of them before its first wave).
    """
    t0 = time.monotonic()
    release = release or prepare_release(target, bundle_dir, build_dir)
    golden = json.loads((bundle_dir / "bundle.json").read_text())["golden"]
    conn = connect(target)
    try:
        dev = Device(conn, target)
        facts = parse_facts(dev.run(facts_command(target), "gather facts", privileged=False).stdout)
        dev.owns_root = facts.owns_root
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
            result.temperature_c = _hottest(dev) if result.health.ok else None
            result.seconds = time.monotonic() - t0
            return result
        with device_lock(dev, _owner()):
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
            if result.health.ok:
                result.temperature_c = _hottest(dev)
        result.seconds = time.monotonic() - t0
        return result
    finally:
        conn.close()


def revert(target: Target, release_id: str, reason: str, log=print) -> HealthResult:
    """Switch `target` back to `release_id` (still on the device), restart, wait for /readyz, record it.

    For a rollout whose wave failed after this device had committed the new release. The
    runtime's /readyz passes only after its own bundle's golden selftest.
    """
    conn = connect(target)
    try:
        dev = Device(conn, target)
        facts = parse_facts(dev.run(facts_command(target), "gather facts", privileged=False).stdout)
        dev.owns_root = facts.owns_root
        if release_id not in facts.releases:
            raise DeployError(f"{target.name}: cannot roll back, releases/{release_id} is not on the device")
        with device_lock(dev, _owner()):
            log(f"  rolling back {facts.current} -> {release_id} ({reason})")
            switch_current(dev, release_id)
            restart_service(dev)
            health = health_gate(dev, {}, check_golden=False)
            log(f"  {health.summary()}")
            record_state(dev, {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "release": release_id,
                "previous": facts.current,
                "healthy": health.ok,
                "reason": f"rollback: {reason}"[:300],
                "active": release_id,
            })
        return health
    finally:
        conn.close()


def previous_good(history: list[dict], current: str | None, on_device: frozenset[str]) -> str | None:
    """Return the newest release in a device's history, other than `current`, that passed its gate and is still there."""
    for entry in reversed(history):
        release = entry.get("active") or entry.get("release")
        if entry.get("healthy") and release and release != current and release in on_device:
            return release
    return None


def rollback(target: Target, release_id: str | None = None, log=print) -> tuple[str, HealthResult]:
    """Roll `target` back to `release_id`, by default to the last good release before the current one."""
    if release_id is None:
        conn = connect(target)
        try:
            dev = Device(conn, target)
            facts = parse_facts(dev.run(facts_command(target), "gather facts", privileged=False).stdout)
            raw = dev.run(f"cat {shlex.quote(dev.path('state.json'))} 2>/dev/null || true", "read state.json",
                          privileged=False, warn=True).stdout
        finally:
            conn.close()
        try:
            history = (json.loads(raw or "{}").get("history") or [])
        except ValueError:
            raise DeployError(f"{target.name}: {target.settings.root}/state.json is not JSON; "
                              "name the release with --to") from None
        release_id = previous_good(history, facts.current, facts.releases)
        if release_id is None:
            raise DeployError(f"{target.name}: no earlier healthy release on the device to roll back to "
                              f"(current {facts.current}; on the device: {', '.join(sorted(facts.releases)) or 'none'})")
    return release_id, revert(target, release_id, "rollback requested", log)
