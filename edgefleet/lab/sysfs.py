"""A fake sysfs per lab device: cpufreq policies and thermal zones shaped like its board.

The tree lives on the host under build/lab/devices/<name>/sysfs/ and mirrors the real paths
(devices/system/cpu/cpufreq/policyN, class/thermal/thermal_zoneN), so the same reader works on
both sides (edge_runtime.sysfs.Sysfs(root)). Two directories are bind-mounted read-write where
the kernel's live in the container, so the rendered tuning unit, the runtime and `status` use
them unchanged. They are plain files: a write to scaling_governor is stored as written (the
kernel would answer EINVAL for a governor not in scaling_available_governors; the host-side
`set_governor` checks that). Temperatures change only through `set_temperature` (the heat
knob), each one an atomic replace so a reader never sees half a number.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.lab.plan import LabInputError

__all__ = ["Cluster", "BoardLayout", "LAYOUTS", "GOVERNORS", "BOOT_GOVERNOR", "IDLE_C", "CPUFREQ", "THERMAL",
           "layout_for", "write_tree", "binds", "set_temperature", "set_governor", "read_governors"]

CPUFREQ = "devices/system/cpu/cpufreq"
THERMAL = "class/thermal"
GOVERNORS = ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil")
BOOT_GOVERNOR = "schedutil"  # what these boards' kernels boot with; the tuning unit changes it
IDLE_C = 45.0


@dataclass(frozen=True)
class Cluster:
    """CPUs that share one cpufreq policy, and the policy's frequency range in kHz."""

    cpus: tuple[int, ...]
    min_khz: int
    max_khz: int

    @property
    def policy(self) -> str:
        return f"policy{self.cpus[0]}"


@dataclass(frozen=True)
class BoardLayout:
    """A board's cpufreq clusters and thermal zone types (thermal_zone0, 1, ... in order)."""

    clusters: tuple[Cluster, ...]
    zones: tuple[str, ...]

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(cpu for cluster in self.clusters for cpu in cluster.cpus))


def _cpus(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


_JETSON_ZONES = ("cpu-thermal", "gpu-thermal", "cv0-thermal", "soc0-thermal", "tj-thermal")
# As the boards' kernels lay them out (policy per cluster, zone types from their device trees).
LAYOUTS = {
    "pi5": BoardLayout((Cluster(_cpus(0, 3), 1500000, 2400000),), ("cpu-thermal",)),
    "orin-nano": BoardLayout((Cluster(_cpus(0, 3), 115200, 1510400), Cluster(_cpus(4, 5), 115200, 1510400)),
                             _JETSON_ZONES),
    "orin-agx": BoardLayout(tuple(Cluster(_cpus(i, i + 3), 115200, 2201600) for i in (0, 4, 8)), _JETSON_ZONES),
    "rk3588": BoardLayout((Cluster(_cpus(0, 3), 408000, 1800000), Cluster(_cpus(4, 5), 408000, 2352000),
                           Cluster(_cpus(6, 7), 408000, 2352000)),
                          ("soc-thermal", "bigcore0-thermal", "bigcore1-thermal", "littlecore-thermal",
                           "center-thermal", "gpu-thermal", "npu-thermal")),
    "qemu-virt": BoardLayout((Cluster(_cpus(0, 3), 1000000, 2000000),), ("cpu-thermal",)),
}


def layout_for(board: str, cores: int) -> BoardLayout:
    """Return the board's layout; a board without one gets one policy over its cores and a cpu-thermal zone."""
    if board in LAYOUTS:
        return LAYOUTS[board]
    return BoardLayout((Cluster(_cpus(0, cores - 1), 1000000, 2000000),), ("cpu-thermal",))


def _write(path: Path, text: str, mode: int) -> None:
    """Write a sysfs-like file atomically (replace), with the kernel's mode for it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _millidegrees(celsius: float) -> str:
    return f"{round(celsius * 1000)}\n"


def write_tree(root: Path, layout: BoardLayout) -> None:
    """Create the fake cpufreq and thermal tree under `root` (replacing any there)."""
    import shutil

    for sub in (CPUFREQ, THERMAL):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    for cluster in layout.clusters:
        policy = root / CPUFREQ / cluster.policy
        policy.mkdir()
        cpus = " ".join(map(str, cluster.cpus)) + "\n"
        files = {
            "affected_cpus": (cpus, 0o444), "related_cpus": (cpus, 0o444),
            "cpuinfo_min_freq": (f"{cluster.min_khz}\n", 0o444),
            "cpuinfo_max_freq": (f"{cluster.max_khz}\n", 0o444),
            "cpuinfo_transition_latency": ("40000\n", 0o444),
            "scaling_available_governors": (" ".join(GOVERNORS) + "\n", 0o444),
            "scaling_driver": ("cpufreq-dt\n", 0o444),
            "scaling_governor": (BOOT_GOVERNOR + "\n", 0o644),
            "scaling_cur_freq": (f"{cluster.min_khz}\n", 0o444),
            "scaling_min_freq": (f"{cluster.min_khz}\n", 0o644),
            "scaling_max_freq": (f"{cluster.max_khz}\n", 0o644),
            "scaling_setspeed": ("<unsupported>\n", 0o644),
        }
        for name, (text, mode) in files.items():
            _write(policy / name, text, mode)
    for number, kind in enumerate(layout.zones):
        zone = root / THERMAL / f"thermal_zone{number}"
        zone.mkdir()
        for name, (text, mode) in {"type": (kind + "\n", 0o444), "temp": (_millidegrees(IDLE_C), 0o444),
                                   "mode": ("enabled\n", 0o644), "policy": ("step_wise\n", 0o644)}.items():
            _write(zone / name, text, mode)


def binds(root: Path) -> dict[str, dict]:
    """Return docker binds that put the fake tree where the kernel's lives in the container."""
    root = Path(root).resolve()
    return {str(root / sub): {"bind": f"/sys/{sub}", "mode": "rw"} for sub in (CPUFREQ, THERMAL)}


def _zone_dirs(root: Path) -> list[Path]:
    return sorted((root / THERMAL).glob("thermal_zone*"), key=lambda p: int(p.name.removeprefix("thermal_zone")))


def set_temperature(root: Path, celsius: float, zone: str | None = None) -> list[str]:
    """Set one zone (number, thermal_zoneN or its type) or every zone to `celsius`; return the zones set."""
    if not -40.0 <= celsius <= 150.0:
        raise LabInputError(f"celsius: expected -40..150, got {celsius}")
    zones = _zone_dirs(root)
    if not zones:
        raise LabInputError(f"{root / THERMAL}: no thermal zones (is the device up?)")
    if zone is not None:
        wanted = str(zone)
        chosen = [z for z in zones if wanted in (z.name, z.name.removeprefix("thermal_zone"),
                                                 (z / "type").read_text().strip())]
        if not chosen:
            known = ", ".join(f"{z.name.removeprefix('thermal_zone')} ({(z / 'type').read_text().strip()})"
                              for z in zones)
            raise LabInputError(f"zone: no thermal zone {wanted!r} (known: {known})")
        zones = chosen
    for z in zones:
        _write(z / "temp", _millidegrees(celsius), 0o444)
    return [z.name for z in zones]


def set_governor(root: Path, governor: str, policy: str | None = None) -> list[str]:
    """Set the governor of one policy or all, as the kernel would: only an available one."""
    policies = sorted((root / CPUFREQ).glob("policy*"), key=lambda p: int(p.name.removeprefix("policy")))
    if policy is not None:
        policies = [p for p in policies if p.name == policy]
        if not policies:
            raise LabInputError(f"policy: no cpufreq {policy!r} under {root / CPUFREQ}")
    for p in policies:
        available = (p / "scaling_available_governors").read_text().split()
        if governor not in available:
            raise LabInputError(f"governor: {governor!r} is not available on {p.name} ({' '.join(available)})")
        _write(p / "scaling_governor", governor + "\n", 0o644)
    return [p.name for p in policies]


def read_governors(root: Path) -> dict[str, str]:
    """Return policy name -> governor as stored in the tree."""
    return {p.name: (p / "scaling_governor").read_text().strip()
            for p in sorted((root / CPUFREQ).glob("policy*"), key=lambda p: int(p.name.removeprefix("policy")))}
