"""Read cpufreq policies and thermal zones from a sysfs tree (one root, pure parsers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Policy", "Zone", "Sysfs", "parse_cpu_list", "parse_millidegrees", "parse_khz",
           "governor_drift"]


@dataclass(frozen=True)
class Policy:
    """One cpufreq policy: its CPUs, governor and frequencies in kHz (None when unreadable)."""

    name: str
    cpus: tuple[int, ...]
    governor: str | None
    cur_khz: int | None
    max_khz: int | None


@dataclass(frozen=True)
class Zone:
    """One thermal zone: its sysfs name, its type and its temperature in °C."""

    name: str
    type: str
    temp_c: float | None


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse "0 1 2" or "0-3,6" into sorted CPU ids."""
    cpus: set[int] = set()
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(cpus))


def parse_millidegrees(text: str) -> float:
    """Parse a thermal_zone temp (millidegrees Celsius) into °C."""
    return int(text.strip()) / 1000.0


def parse_khz(text: str) -> int | None:
    """Parse a scaling_*_freq value; "<unknown>" and the like give None."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def governor_drift(policies: list[Policy], wanted: str | None) -> list[str]:
    """Return the names of policies whose governor differs from the wanted one."""
    if not wanted:
        return []
    return [policy.name for policy in policies if policy.governor != wanted]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _number_key(path: Path) -> tuple:
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


class Sysfs:
    """The sysfs tree under one root (default /sys; tests point it at a fake tree)."""

    def __init__(self, root="/sys"):
        self.root = Path(root)

    def policies(self) -> list[Policy]:
        """Return every cpufreq policy, in number order (empty without cpufreq)."""
        base = self.root / "devices/system/cpu/cpufreq"
        out = []
        for path in sorted(base.glob("policy*"), key=_number_key):
            cpus = _read(path / "affected_cpus")
            governor = _read(path / "scaling_governor")
            cur, top = _read(path / "scaling_cur_freq"), _read(path / "scaling_max_freq")
            try:
                cpu_ids = parse_cpu_list(cpus) if cpus is not None else ()
            except ValueError:
                cpu_ids = ()
            out.append(Policy(path.name, cpu_ids, governor.strip() if governor else None,
                              parse_khz(cur) if cur else None, parse_khz(top) if top else None))
        return out

    def zones(self, names=()) -> list[Zone]:
        """Return thermal zones (all, or those whose name or type is in names)."""
        return self.read_zones(self.find_zones(names))

    def find_zones(self, names=()) -> list[tuple[str, str, Path]]:
        """Return (name, type, temp file) of the thermal zones (all, or those whose name or type is in names)."""
        base = self.root / "class/thermal"
        out = []
        for path in sorted(base.glob("thermal_zone*"), key=_number_key):
            kind = (_read(path / "type") or "").strip()
            if names and path.name not in names and kind not in names:
                continue
            out.append((path.name, kind, path / "temp"))
        return out

    @staticmethod
    def read_zones(found: list[tuple[str, str, Path]]) -> list[Zone]:
        """Read the temperature of zones `find_zones` found (None where unreadable)."""
        out = []
        for name, kind, temp_file in found:
            raw = _read(temp_file)
            try:
                temp = parse_millidegrees(raw) if raw is not None else None
            except ValueError:
                temp = None
            out.append(Zone(name, kind, temp))
        return out
