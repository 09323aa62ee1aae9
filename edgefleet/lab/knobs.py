"""Knobs tests and people turn on a running lab device: heat (its fake thermal zones)."""

from __future__ import annotations

from edgefleet.lab import plan, sysfs
from edgefleet.lab.devices import LabPaths, running_device

__all__ = ["heat"]


def heat(paths: LabPaths, device: str, celsius: float, zone: str | int | None = None) -> list[str]:
    """Set lab device `device`'s thermal zone (number, thermal_zoneN or type; default all) to `celsius`.

    Returns the zones set. The device's runtime sees it on its next thermal poll, `status` at once.
    """
    running_device(paths, device)
    root = paths.sysfs(device)
    if not (root / sysfs.THERMAL).is_dir():
        raise plan.LabInputError(f"device: {device} has no fake sysfs under {root} (made by an older lab; "
                         "run `invoke lab.down` and `lab.up` again)")
    return sysfs.set_temperature(root, float(celsius), None if zone is None else str(zone))
