"""What a device runs and how it differs from what we rendered: facts (command + parser) -> drift."""

from __future__ import annotations

import difflib
import shlex
from dataclasses import asdict, dataclass, field

from .deploy.facts import ACTIVE, ARCH, COMMITTED, CURRENT, GOVERNORS, Fact, Values, read_values, script
from .inventory import Target
from .render import TUNING_UNIT, UNIT_NAME, RenderedFile

__all__ = ["DeviceState", "TargetStatus", "status_command", "parse_status", "find_drift", "unified_diffs",
           "read_files_command", "plain"]

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


def plain(value: object):
    """Return `value` as rich text that is never read as markup: device strings (a governor file,
    an error a device printed) may hold `[`...`]`, which rich would parse (or fail on)."""
    from rich.text import Text

    return Text(str(value))


def _file_shas(files: list[RenderedFile]) -> Fact[dict[str, str | None]]:
    """The sha256 of each rendered file where the device has it (`sha:<path>=`, empty if missing)."""
    def lines(target: Target) -> list[str]:
        return [f"echo \"sha:{f.device_path}=$(sha256sum {shlex.quote(f.device_path)} 2>/dev/null | cut -d' ' -f1)\""
                for f in files]

    def parse(values: Values) -> dict[str, str | None]:
        shas: dict[str, str | None] = {}
        for key, value in values.items():
            if key.startswith("sha:") and key[4:]:  # compared with the rendered file's: any other text differs
                shas[key[4:]] = value or None
        return shas
    return Fact(lines, parse)


def _parse_temperatures(values: Values) -> dict[str, dict]:
    temps: dict[str, dict] = {}
    for key, value in values.items():
        if key.startswith("temp:") and key[5:]:
            zone_type, _, milli = value.rpartition("=")
            celsius = int(milli) / 1000.0 if milli.lstrip("-").isascii() and milli.lstrip("-").isdigit() else None
            temps[key[5:]] = {"type": zone_type, "celsius": celsius}
    return temps


# one line `temp:<zone>=<type>=<millidegrees>` per thermal zone
TEMPERATURES: Fact[dict[str, dict]] = Fact(
    lambda target: [f'for z in {_SYSFS}/class/thermal/thermal_zone*; do '
                    '[ -r "$z/temp" ] && echo "temp:${z##*/}=$(cat "$z/type" 2>/dev/null)=$(cat "$z/temp")"; done'],
    _parse_temperatures)

ENABLED: Fact[str] = Fact(lambda target: [f'echo "enabled=$(systemctl is-enabled {UNIT_NAME} 2>/dev/null)"'],
                          lambda values: values.get("enabled") or "unknown")
TUNING_ACTIVE: Fact[str] = Fact(lambda target: [f'echo "tuning=$(systemctl is-active {TUNING_UNIT} 2>/dev/null)"'],
                                lambda values: values.get("tuning") or "unknown")


def status_command(target: Target, files: list[RenderedFile]) -> str:
    """Return one shell command that prints what `parse_status` reads."""
    return script(target, (ARCH, CURRENT, COMMITTED, ACTIVE, ENABLED, TUNING_ACTIVE, _file_shas(files), GOVERNORS,
                           TEMPERATURES))


def parse_status(output: str) -> DeviceState:
    """Parse the output of `status_command` (FactError, naming what, on a shape it does not take)."""
    values = read_values(output)
    return DeviceState(
        arch=ARCH.parse(values) if "arch" in values else "",
        current=CURRENT.parse(values),
        committed=COMMITTED.parse(values),
        service_active=ACTIVE.parse(values),
        service_enabled=ENABLED.parse(values),
        tuning_active=TUNING_ACTIVE.parse(values),
        file_sha256=_file_shas([]).parse(values),
        governors=dict(GOVERNORS.parse(values)),
        temperatures=TEMPERATURES.parse(values),
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
