"""What a device runs and how it differs from what we rendered: facts (command + parser) -> drift."""

from __future__ import annotations

import difflib
import shlex
from dataclasses import asdict, dataclass, field

from .deploy.facts import ARCH_NAMES, COMMITTED_FACT, GOVERNORS_FACT
from .inventory import Target
from .render import TUNING_UNIT, UNIT_NAME, RenderedFile

__all__ = ["DeviceState", "TargetStatus", "status_command", "parse_status", "find_drift", "unified_diffs",
           "read_files_command"]

_SYSFS = "/sys"


@dataclass(frozen=True)
class DeviceState:
    """What `status_command` found on the device."""

    arch: str
    current: str | None
    committed: str | None
    service_active: str
    service_enabled: str
    tuning_active: str
    file_sha256: dict[str, str | None]
    governors: dict[str, str]
    temperatures: dict[str, dict]


@dataclass
class TargetStatus:
    """One line of `status`: release, health, governor, temperatures, drift."""

    target: str
    reachable: bool
    release: str | None = None
    committed: str | None = None
    healthy: bool | None = None
    ready_detail: str = ""
    service: str = "unknown"
    governors: dict[str, str] = field(default_factory=dict)
    temperatures: dict[str, dict] = field(default_factory=dict)
    throttling: str = "unknown"
    drift: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. an execution provider fallback
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def status_command(target: Target, files: list[RenderedFile]) -> str:
    """Return one shell command that prints what `parse_status` reads."""
    lines = [
        f"root={shlex.quote(target.settings.root)}",
        'echo "arch=$(uname -m)"',
        'echo "current=$(readlink "$root/current" 2>/dev/null)"',
        COMMITTED_FACT,
        f'echo "active=$(systemctl is-active {UNIT_NAME} 2>/dev/null)"',
        f'echo "enabled=$(systemctl is-enabled {UNIT_NAME} 2>/dev/null)"',
        f'echo "tuning=$(systemctl is-active {TUNING_UNIT} 2>/dev/null)"',
    ]
    for f in files:
        path = shlex.quote(f.device_path)
        lines.append(f"echo \"sha:{f.device_path}=$(sha256sum {path} 2>/dev/null | cut -d' ' -f1)\"")
    lines += [
        GOVERNORS_FACT,
        f'for z in {_SYSFS}/class/thermal/thermal_zone*; do '
        '[ -r "$z/temp" ] && echo "temp:${z##*/}=$(cat "$z/type" 2>/dev/null)=$(cat "$z/temp")"; done',
        "true",
    ]
    return "\n".join(lines)


def parse_status(output: str) -> DeviceState:
    """Parse the output of `status_command`."""
    values, shas, governors, temps = {}, {}, {}, {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        kind, _, name = key.partition(":")
        if kind == "sha" and name:
            shas[name] = value or None
        elif kind == "governor" and name:
            governors[name] = value.strip()
        elif kind == "temp" and name:
            zone_type, _, milli = value.rpartition("=")
            try:
                temps[name] = {"type": zone_type, "celsius": int(milli) / 1000.0}
            except ValueError:
                temps[name] = {"type": zone_type, "celsius": None}
        else:
            values[key] = value.strip()
    return DeviceState(
        arch=ARCH_NAMES.get(values.get("arch", ""), values.get("arch", "")),
        current=values.get("current", "").rsplit("/", 1)[-1] or None,
        committed=values.get("committed") or None,
        service_active=values.get("active") or "unknown",
        service_enabled=values.get("enabled") or "unknown",
        tuning_active=values.get("tuning") or "unknown",
        file_sha256=shas,
        governors=governors,
        temperatures=temps,
    )


def find_drift(target: Target, files: list[RenderedFile], state: DeviceState) -> list[str]:
    """List every way the device differs from the inventory and the rendered files."""
    from .digest import sha256_bytes

    s = target.settings
    drift = []
    if state.arch and state.arch != s.arch:
        drift.append(f"arch is {state.arch}, inventory says {s.arch}")
    if state.current is None:
        return drift + ["nothing deployed (no current release)"]
    for f in files:
        got = state.file_sha256.get(f.device_path)
        if got is None:
            drift.append(f"{f.device_path} is missing")
        elif got != sha256_bytes(f.text.encode()):
            drift.append(f"{f.device_path} differs from the rendered file (render --target {target.name} --diff)")
    if state.service_enabled != "enabled":
        drift.append(f"{UNIT_NAME} is {state.service_enabled}, not enabled")
    if state.service_active != "active":
        drift.append(f"{UNIT_NAME} is {state.service_active}, not active")
    if state.tuning_active != "active":
        drift.append(f"{TUNING_UNIT} is {state.tuning_active}: governor and power mode not applied")
    for policy, governor in sorted(state.governors.items()):
        if governor != s.governor:
            drift.append(f"cpufreq {policy} governor is {governor}, expected {s.governor}")
    if state.committed != state.current:
        drift.append(f"current release {state.current} never passed a health gate (committed: {state.committed})")
    return drift


def throttling(target: Target, temperatures: dict[str, dict]) -> str:
    """Say whether the hottest watched zone is below the soft limit, above it, or above the hard one."""
    zones = target.settings.thermal.zones
    readings = [t["celsius"] for name, t in temperatures.items()
                if t.get("celsius") is not None and (not zones or name in zones or t.get("type") in zones)]
    if not readings:
        return "no thermal zones"
    hottest = max(readings)
    if hottest >= target.settings.thermal.hard_c:
        return f"hard ({hottest:.1f} C)"
    if hottest >= target.settings.thermal.soft_c:
        return f"soft ({hottest:.1f} C)"
    return f"ok ({hottest:.1f} C)"


def read_files_command(files: list[RenderedFile]) -> str:
    """Return a command printing each device file behind a marker line (empty when missing)."""
    return "\n".join(f"echo {shlex.quote('@@edgefleet-file ' + f.device_path)}; "
                     f"cat {shlex.quote(f.device_path)} 2>/dev/null; echo"
                     for f in files)


def unified_diffs(files: list[RenderedFile], output: str) -> list[str]:
    """Return a unified diff (device -> rendered) per file that differs, from `read_files_command` output."""
    on_device: dict[str, str] = {}
    current = None
    for line in output.splitlines(keepends=True):
        if line.startswith("@@edgefleet-file "):
            current = line.split(" ", 1)[1].strip()
            on_device[current] = ""
        elif current is not None:
            on_device[current] += line
    diffs = []
    for f in files:
        before = on_device.get(f.device_path, "")
        before = before[:-1] if before.endswith("\n") else before  # the echo after cat
        if before != f.text:
            diffs.append("".join(difflib.unified_diff(
                before.splitlines(keepends=True), f.text.splitlines(keepends=True),
                fromfile=f"device:{f.device_path}", tofile=f"rendered:{f.name}")))
    return diffs
