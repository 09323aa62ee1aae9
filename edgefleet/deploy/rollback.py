"""Roll a device back to an earlier release still on it, through the same health gate as a deploy."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from ..inventory import Target
from ..transport import SSHError, connect
from .activate import IMAGE_ENV, restart_service, switch_current
from .converge import describe_drift, kept_release_repairs, repair_command, verify_objects
from .device import DeployError, Device, now
from .facts import Facts, PlanError, ask_facts, ask_kept_release, check_room
from .gate import health_gate, release_golden
from .health import HealthResult
from .lock import device_lock
from .prune import previous_committed
from .record import read_state, record_state

__all__ = ["RollbackResult", "revert", "rollback"]


@dataclass
class RollbackResult:
    """How a rollback ended: `active` is the release running afterwards."""

    target: str
    from_release: str | None
    to_release: str | None
    ok: bool
    active: str | None
    health: HealthResult | None = None
    restored: bool = False  # the older release failed its gate, so the device went back to `from_release`
    skipped: bool = False  # nothing earlier to go back to: the device was left as it is (not a failure)
    seconds: float = 0.0
    error: str = ""


def _history(dev: Device, log) -> list[dict]:
    read = read_state(dev)
    if read.problem:
        log(f"  {read.problem}")
    return list(read.state.history)


def _check_image(dev: Device, facts: Facts, release_id: str) -> None:
    """Refuse to roll an image target back to a release whose image is gone (or that has none)."""
    if dev.target.settings.ship != "image":
        return
    path = dev.path("releases", release_id, IMAGE_ENV)
    res = dev.run(f"cat {shlex.quote(path)}", f"read {IMAGE_ENV}", privileged=False, warn=True)
    values = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    image_id = values.get("EDGEFLEET_IMAGE")
    if not image_id:
        raise DeployError(f"{dev.target.name}: releases/{release_id} has no {IMAGE_ENV}: it is not an image "
                          f"release (ship: venv when it was made); deploy it again instead")
    if image_id not in facts.images:
        raise DeployError(f"{dev.target.name}: cannot roll back, image {image_id[:19]} of releases/{release_id} "
                          f"is no longer in the device's docker")


def _converge_kept_release(dev: Device, facts: Facts, release_id: str, log) -> None:
    """Check releases/`release_id` file by file against its manifest, as a deploy checks the
    active release, before anything switches to it; put back what verified objects can.

    Raise DeployError naming each file that nothing on the device can put back (its object
    corrupt or gone, or the manifest itself edited): the device then stays as it is. The host is
    not asked for the bytes: a rollback works from what the device holds (the host may no longer
    have that release's bundle), and a deploy of that bundle sends them again.
    """
    try:
        drift = ask_kept_release(dev, release_id)
    except ValueError as exc:
        raise DeployError(f"{dev.target.name}: cannot roll back: {exc}") from None
    # objects written to since verified: hashed again (the intact ones get their mark back)
    corrupt = verify_objects(dev, sorted(drift.suspect_objects))
    repairs, refusals = kept_release_repairs(drift, corrupt, facts.objects)
    if refusals:
        raise DeployError(f"{dev.target.name}: cannot roll back to {release_id}: {'; '.join(refusals)}. Nothing "
                          f"was changed (still on {facts.current}); deploy a bundle instead (it sends the "
                          f"objects again), or roll back --to another release (status --releases lists them)")
    if not repairs:
        return
    wanted = {path for path, _ in repairs}
    for line in describe_drift(tuple(f for f in drift.files if f[0] in wanted)):
        log(f"  repair: {line}")
    dev.run(repair_command(dev, repairs, dev.path("releases", release_id)), f"repair releases/{release_id}")


def revert(target: Target, release_id: str | None, reason: str, log=print) -> RollbackResult:
    """Switch `target` to `release_id` (None: the previous committed release), restart, gate, record.

    If that release fails its gate, the device goes back to the release it had (which passed
    its own gate before) and the rollback counts as failed.
    """
    t0 = time.monotonic()
    conn = connect(target)
    try:
        dev = Device(conn, target)
        # whether the login user owns the device root decides how the lock itself is written
        first = ask_facts(dev)
        dev.owns_root = first.owns_root
        check_room(target, first, "roll back")  # a rollback writes the lock and state.json
        with device_lock(dev, log, now(), reconnect=lambda: connect(target)):
            facts = ask_facts(dev)
            to = release_id or previous_committed(_history(dev, log), facts.current)
            result = RollbackResult(target.name, facts.current, to, False, facts.current)
            if to is None:  # nothing to go back to is not a failure: the device stays as it is
                result.ok, result.skipped = True, True
                result.error = (f"skipped: no earlier committed release on the device (still on "
                                f"{facts.current or 'no release'})")
                log(f"  {result.error}")
                result.seconds = time.monotonic() - t0
                return result
            if to not in facts.releases:
                raise DeployError(f"{target.name}: cannot roll back, releases/{to} is not on the device")
            _check_image(dev, facts, to)
            _converge_kept_release(dev, facts, to, log)
            log(f"  rolling back {facts.current} -> {to} ({reason})")
            switch_current(dev, to)
            restart_service(dev)
            result.health = health_gate(dev, release_golden(dev, to))
            log(f"  {result.health.summary()}")
            result.ok, result.active = result.health.ok, to
            if not result.ok and facts.current in facts.releases and facts.current != to:
                log(f"  {to} failed its gate: back to {facts.current}")
                switch_current(dev, facts.current)
                restart_service(dev)
                result.restored, result.active = True, facts.current
                result.error = f"{to} failed its health gate: {result.health.reason}"[:500]
            record_state(dev, {
                "time": now(),
                "release": to,
                "previous": facts.current,
                "healthy": result.health.ok,
                "reason": f"rollback: {reason}"[:300]
                + ("" if result.ok else f"; failed: {result.health.reason}"[:200]),
                "active": result.active,
            }, log=log)
        result.seconds = time.monotonic() - t0
        return result
    finally:
        conn.close()


def rollback(target: Target, release_id: str | None = None, log=print) -> RollbackResult:
    """Roll `target` back to `release_id` (default: its previous committed release); errors become the result."""
    t0 = time.monotonic()
    try:
        return revert(target, release_id, "requested", log=log)
    except (DeployError, PlanError, SSHError, OSError) as exc:  # one device's failure is its result
        return RollbackResult(target.name, None, None, False, None, error=str(exc) or type(exc).__name__,
                              seconds=time.monotonic() - t0)
