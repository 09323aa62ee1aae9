"""One deploy of one target: facts -> plan -> transfer -> activate -> gate -> record, or roll back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote

from ..device_env import DeviceEnv, build_target_env
from ..errors import InputError
from ..inventory import Target
from ..inventory_check import check_bundle_fits
from ..paths import repo_root
from ..render import check_rendered, render_target
from ..transport import SSHError, connect
from .activate import apply_plan, restart_service, switch_current
from .converge import verify_objects
from .device import DeployError, Device, now
from .facts import Facts, PlanError, ask_facts, ask_kept_release, check_room
from .gate import health_gate
from .gpu_packages import gpu_package_check
from .health import HealthResult
from .lock import device_lock, without_stale_lock
from .plan import DeployPlan, make_plan
from .prune import prune
from .record import record_state
from .regression import committed_p95
from .release import Release, ReleaseError, make_release, read_json
from .secrets import write_token_file
from .variant import pick_variant

__all__ = ["DeployResult", "prepare_release", "deploy", "gather_facts", "DEFAULT_IMAGE_TAG"]

DEFAULT_IMAGE_TAG = "edgefleet/runtime:latest"  # config edgefleet.image.tag


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
    temperature_c: float | None = None  # hottest thermal zone during the gate, when the device has any
    pruned: list[str] = field(default_factory=list)  # old releases deleted after the commit
    variant: str = "int8"  # the bundle variant the target got (its board's bundle.precision, or tuned)
    tuned: str = ""  # the tuning file (`tune`) its variant and threads came from, when one did
    warnings: list[str] = field(default_factory=list)  # e.g. the board's variant was not in the set

    @property
    def repaired(self) -> bool:
        """Drift put back on the release the device was on already (not a release finished or changed)."""
        return self.previous == self.release_id and any(line.lstrip().startswith("repair:") for line in self.plan)

    @property
    def ok(self) -> bool:
        return self.health is None or self.health.ok


def prepare_release(target: Target, bundle_dir: Path, build_dir: Path, env: DeviceEnv | None = None,
                    image_tag: str = DEFAULT_IMAGE_TAG, log=print, rendered=None) -> Release:
    """Render, check and collect everything the device gets, on the host (`env`: packages resolved already).

    `ship: image` targets get `image_tag`'s image for their arch (built by `image.build`) instead of packages.
    `rendered`: the target's files, rendered (and checked) already.
    """
    check_bundle_fits(target, bundle_dir)  # before any work: a value the bundle cannot honour
    if rendered is None:
        rendered = render_target(target)
        check_rendered(rendered, cache_dir=build_dir / "checked")
    if target.settings.ship == "image":
        from ..engine import EngineError
        from ..image.archive import ArchiveError
        from ..image.build import ImageError
        from ..image.ship import shipped_image
        try:
            image = shipped_image(image_tag, target.settings.arch, build_dir, log=log)
        except (ImageError, ArchiveError, EngineError) as exc:
            raise ReleaseError(f"{target.name} (ship: image, {target.source}): {exc}") from None
        return make_release(target.name, bundle_dir, repo_root() / "payload", rendered, None, image=image)
    if env is None:
        env = build_target_env(target, repo_root() / "payload" / "requirements.txt", build_dir / "device-envs")
    return make_release(target.name, bundle_dir, repo_root() / "payload", rendered, env, cache_dir=build_dir / "pyc")


def _golden(path: Path) -> dict:
    """Return the bundle's golden outputs, read once per file version (every device's gate uses them)."""
    return read_json(path)["golden"]


def gather_facts(target: Target) -> Facts | None:
    """Return the device's facts, or None when they cannot be had now (a deploy then asks, and says why).

    A rollout asks its first wave's devices while it prepares the releases on the host.
    """
    try:
        conn = connect(target)
    except Exception:
        return None
    try:
        return ask_facts(Device(conn, target))
    except Exception:
        return None
    finally:
        conn.close()


def _activate_and_gate(dev: Device, plan: DeployPlan, release: Release, golden: dict, log,
                       baseline_p95_ms: float | None = None) -> HealthResult:
    """Activate the release and run the health gate; a failure once `current` has switched (a step
    that timed out, device data of the wrong shape, a lost restart) is a failed gate, so the caller
    rolls back. A failure before the switch raises: the device still runs what it ran."""
    try:
        if plan.restart:  # before the (re)start that reads it; the token is not part of any object
            write_token_file(dev)
        apply_plan(dev, plan, release, log)
        log("  health gate: /readyz, then golden outputs, p95 latency, RSS and throttling on the device ...")
        return health_gate(dev, golden, baseline_p95_ms=baseline_p95_ms)
    except (DeployError, SSHError, PlanError, OSError) as exc:
        dev.deadline = None
        if not plan.activate or not _switched(dev, release.release_id):
            raise
        return HealthResult(False, f"after the switch: {str(exc)[-600:]}")


def _switched(dev: Device, release_id: str) -> bool:
    """Return whether `current` leads to `release_id` now (False when the device cannot say)."""
    command = f"[ {quote(dev.path('current'))} -ef {quote(dev.path('releases', release_id))} ]"
    try:
        return dev.run(command, "check where current leads", privileged=False, warn=True).exited == 0
    except Exception:  # the link is gone (Fabric raises paramiko's own errors): the first failure stands
        return False


def deploy(target: Target, bundle_dir: Path, build_dir: Path, dry_run: bool = False, log=print,
           release: Release | None = None, image_tag: str = DEFAULT_IMAGE_TAG,
           facts: Facts | None = None, on_facts=None) -> DeployResult:
    """Deploy `bundle_dir` to `target` and gate on health; roll back by itself on failure.

    `release`: prepared already for this target (a rollout prepares all of them before its first wave).
    `facts`: the device's, gathered moments ago (a rollout's first wave, while the releases were prepared).
    `on_facts(facts)`: called once the device's facts are known (a report then knows its previous
    release even when a later step fails).
    """
    from ..tune.recorded import apply_tuning, shown

    t0 = time.monotonic()
    # the board class's recorded choice (`tune`) where the inventory pins nothing (a rollout applied it already)
    target, tuned = apply_tuning(target, build_dir)
    if tuned is not None:
        log(f"  {target.name}: {tuned.note}")
    package_error, package_note = gpu_package_check(target)
    if package_error:
        raise InputError(package_error)
    if package_note:
        log(f"  note: {package_note}")
    variant = pick_variant(target, bundle_dir)
    if variant.warning:
        log(f"  warning: {variant.warning}")
    bundle_dir = variant.bundle_dir
    release = release or prepare_release(target, bundle_dir, build_dir, image_tag=image_tag, log=log)
    golden = _golden(bundle_dir / "bundle.json")
    conn = connect(target)
    try:
        dev = Device(conn, target, deadline=time.monotonic() + target.settings.deploy.device_deadline_s)
        if facts is None:
            facts = ask_facts(dev)
        if on_facts is not None:
            on_facts(facts)
        dev.owns_root = facts.owns_root
        # objects written to since they were verified: hashed again; the corrupt ones are sent again
        corrupt = frozenset(verify_objects(dev, sorted(facts.drift.suspect_objects), restamp=not dry_run))
        # a release kept on the device and about to be switched to again is checked as the active one is
        kept = (ask_kept_release(dev, release.release_id)
                if release.release_id in facts.releases and facts.current != release.release_id else None)
        plan: DeployPlan = make_plan(target, release, without_stale_lock(target, facts, log), corrupt, kept)
        lines = plan.describe()
        for line in lines:
            log(line)
        result = DeployResult(target.name, release.release_id, facts.current, not plan.nothing_to_do, plan=lines,
                              variant=variant.precision, warnings=[variant.warning] if variant.warning else [],
                              tuned=shown(tuned.path) if tuned is not None and tuned.variant else "")
        if dry_run:
            return result
        if plan.nothing_to_do:
            result.health = health_gate(dev, golden, judge_model=False)
            log(f"  {result.health.summary()}")
            result.seconds = time.monotonic() - t0
            return result
        check_room(target, facts, "deploy")  # the plan counted the uploads; this, every write
        with device_lock(dev, log, now(), reconnect=lambda: connect(target)):
            baseline = committed_p95(dev, facts.committed) if facts.committed != release.release_id else None
            try:
                result.health = _activate_and_gate(dev, plan, release, golden, log, baseline)
            finally:
                dev.deadline = None  # rolling back and recording get their command timeouts, whatever the hour
            result.temperature_c = result.health.temperature_c
            log(f"  {result.health.summary()}")
            # back to the last release that passed its gate (not merely the one that was current)
            good = facts.committed if facts.committed in facts.releases - {release.release_id} else None
            if not result.health.ok and good:
                log(f"  rolling back to {good}")
                switch_current(dev, good)
                restart_service(dev)
                result.rolled_back, result.previous = True, good
            sound = record_state(dev, {
                "time": now(),
                "release": release.release_id,
                "bundle": release.bundle_id,
                "variant": variant.precision,
                "previous": facts.current,
                "healthy": result.health.ok,
                "reason": result.health.reason[:300],
                "p95_ms": result.health.p95_ms,  # the regression gate's baseline for the next release
                "active": result.previous if result.rolled_back else release.release_id,
            }, log=log)
            if result.health.ok and sound:
                result.pruned = prune(dev, release.release_id, log)
            elif result.health.ok:
                log("  prune skipped until state.json holds a sound history (next deploy)")
        result.seconds = time.monotonic() - t0
        return result
    finally:
        conn.close()
