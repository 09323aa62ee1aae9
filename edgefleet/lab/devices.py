"""Bring lab devices up and down: containers with systemd as PID 1 and sshd on loopback.

Privileges: docker's default seccomp profile plus CAP_SYS_ADMIN, which systemd needs to set
up the namespaces of the units it runs (ProtectSystem=, PrivateTmp=, ...): without it those
settings are silently not applied, and the lab would not test the hardened unit real boards
run; and CAP_SYS_NICE, with which systemd applies the unit's Nice= on boards whose profile sets nice < 0.
systemd needs its name=systemd cgroup writable, which the read-only bind of /sys/fs/cgroup
gives on this cgroup-v1 host (docker makes only the top mount read-only, the hierarchies under
it stay writable); /run and /run/lock are tmpfs as systemd expects. Both mean root in a lab
container can reach the host: a lab is for this machine's tests only.

Each device gets a fake sysfs shaped like its board (edgefleet.lab.sysfs), bind-mounted at
/sys/devices/system/cpu/cpufreq and /sys/class/thermal.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefleet import engine
from edgefleet.inventory import load_board_profiles
from edgefleet.lab import image, keys, plan, probe, sysfs

from ..errors import EdgefleetError

__all__ = ["LabPaths", "DeviceStatus", "LabBusy", "up", "down", "status", "session", "running_device"]

UP_TIMEOUT_S = {"amd64": 120.0, "arm64": 300.0}


@dataclass(frozen=True)
class LabPaths:
    """Where the lab keeps its state (build/lab) and writes its inventory (targets/lab.yaml)."""

    build_dir: Path
    targets_dir: Path

    @property
    def state(self) -> Path:
        """build/lab for slot 0, build/lab/slot-K for slot K: labs side by side keep their keys,
        known_hosts and fake sysfs apart (one lab's down removed another's key before)."""
        slot = plan.slot()
        return self.build_dir / "lab" if slot == 0 else self.build_dir / "lab" / f"slot-{slot}"

    @property
    def client_key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.targets_dir / "lab.yaml"

    def host_key(self, device: plan.LabDevice) -> Path:
        return self.state / "devices" / device.name / "ssh_host_ed25519_key"

    def sysfs(self, name: str) -> Path:
        """Return the host side of device `name`'s fake sysfs (mirrors /sys)."""
        return (self.state / "devices" / name / "sysfs").resolve()


@dataclass(frozen=True)
class DeviceStatus:
    """One lab device as `lab.status` reports it."""

    name: str
    container: str
    state: str
    arch: str
    ssh_port: int
    runtime_port: int
    board: str = plan.BOARD


def _device(info: engine.ContainerInfo) -> plan.LabDevice:
    """Return the lab device a container was made for (from its labels)."""
    labels = info.labels
    return plan.LabDevice(int(labels.get(f"{plan.LABEL}.index", "0")), labels.get(f"{plan.LABEL}.arch", "?"),
                          labels.get(f"{plan.LABEL}.board", plan.BOARD))


def _spec(device: plan.LabDevice, tag: str, sysfs_root: Path) -> engine.ContainerSpec:
    env = {"container": "docker"}
    if device.arch == "arm64":
        env["QEMU_CPU"] = "neoverse-n1"
    return engine.ContainerSpec(
        name=device.container, image=tag,
        labels={plan.LABEL: str(plan.slot()), f"{plan.LABEL}.device": device.name,
                f"{plan.LABEL}.arch": device.arch, f"{plan.LABEL}.index": str(device.index),
                f"{plan.LABEL}.board": device.board},
        environment=env,
        tmpfs={"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec"},
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}, **sysfs.binds(sysfs_root)},
        cap_add=("SYS_ADMIN", "SYS_NICE"),
        stop_timeout=10,
    )


def _device_files(device: plan.LabDevice, paths: LabPaths, client_public: str) -> dict:
    host_private, _ = keys.ensure_keypair(paths.host_key(device), f"root@{device.name}")
    host_public = keys.public_key(paths.host_key(device))
    return {
        "/etc/ssh/ssh_host_ed25519_key": (host_private, 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": ((host_public + "\n").encode(), 0o644),
        "/etc/ssh/sshd_config.d/10-edgefleet-lab.conf":
            (plan.sshd_config(device.ssh_port).encode(), 0o644),
        "/root/.ssh/authorized_keys": ((client_public + "\n").encode(), 0o600),
        "/etc/edgefleet-lab": (f"{device.name} {device.arch} {device.board}\n".encode(), 0o644),
    }


def _existing() -> dict[str, engine.ContainerInfo]:
    return {info.name: info for info in engine.containers(plan.selector())}


def _write_known_hosts(devices: list[plan.LabDevice], paths: LabPaths) -> None:
    lines = [plan.known_hosts_line(d.ssh_port, keys.public_key(paths.host_key(d)))
             for d in sorted(devices, key=lambda d: d.index)]
    paths.known_hosts.write_text("\n".join(lines) + "\n")


def _wait_ready(devices: list[plan.LabDevice], paths: LabPaths, timeout: float) -> None:
    """Ask every waiting device at once (one SSH probe each) until all are up or time runs out."""
    started = time.monotonic()
    waiting = {d.name: d for d in devices}
    last: dict[str, str] = {}

    def ask(device: plan.LabDevice) -> str:
        return probe.system_state(device.ssh_port, paths.client_key, paths.known_hosts)

    with ThreadPoolExecutor(max_workers=min(16, len(devices) or 1)) as pool:
        while waiting and time.monotonic() - started < timeout:
            names = list(waiting)
            last.update(zip(names, pool.map(ask, [waiting[n] for n in names]), strict=True))
            for name in names:
                if last[name] in probe.READY_STATES:
                    print(f"lab: {name} ready ({last[name]}) after "
                          f"{time.monotonic() - started:.1f} s, ssh 127.0.0.1:{waiting[name].ssh_port}",
                          flush=True)
                    del waiting[name]
            if waiting:
                time.sleep(1.0)
    if waiting:
        details = "\n".join(f"  {n}: {last.get(n)}\n{engine.logs(d.container, 10)}"
                            for n, d in waiting.items())
        raise TimeoutError(f"lab devices not ready after {timeout:.0f} s:\n{details}")


def up(paths: LabPaths, devices: int = 1, arch: str = "arm64", timeout: float | None = None,
       board: str | None = None) -> list[plan.LabDevice]:
    """Start lab devices 1..N (idempotent), wait until SSH and systemd answer, write inventory.

    Boards go round-robin over plan.ROUND_ROBIN unless `board` names one for every device.
    """
    boards = load_board_profiles(paths.targets_dir)
    if board is not None and board not in boards:
        raise plan.LabInputError(f"board: unknown board {board!r} (known: {', '.join(sorted(boards))})")
    wanted = plan.plan_devices(devices, arch, board)
    existing = _existing()
    planned = {d.index: d for d in wanted}
    clash = [f"{d.name} ({d.arch}, {d.board})" for d in map(_device, existing.values())
             if d.arch != arch or (d.index in planned and planned[d.index].board != d.board)]
    if clash:
        raise LabBusy(f"lab already has {', '.join(clash)} with another arch or board; "
                           "run `invoke lab.down` first")
    everyone = wanted + [d for d in map(_device, existing.values()) if d.index > devices]
    paths.state.mkdir(parents=True, exist_ok=True)
    _, client_public = keys.ensure_keypair(paths.client_key, "edgefleet-lab")
    tag = image.ensure_image(arch, paths.build_dir)
    for device in everyone:
        keys.ensure_keypair(paths.host_key(device), f"root@{device.name}")
    _write_known_hosts(everyone, paths)
    started, created = [], []
    for device in wanted:
        info = existing.get(device.container)
        if info is not None and info.status == "running":
            print(f"lab: {device.name} exists ({device.container}, running)", flush=True)
            continue
        if info is None or not paths.sysfs(device.name).is_dir():
            profile = boards[device.board]
            sysfs.write_tree(paths.sysfs(device.name), sysfs.layout_for(device.board, profile.cores))
        if info is None:
            engine.create_container(_spec(device, tag, paths.sysfs(device.name)))
            engine.put_files(device.container, _device_files(device, paths, client_public))
            created.append(device)
        print(f"lab: starting {device.name} ({arch}, ssh 127.0.0.1:{device.ssh_port})",
              flush=True)
        engine.start(device.container)
        started.append(device)
    try:
        _wait_ready(everyone, paths, timeout or UP_TIMEOUT_S[arch])
    except BaseException:
        for device in created:  # leave nothing half-started behind
            engine.remove(device.container)
        raise
    paths.targets_dir.mkdir(parents=True, exist_ok=True)
    settings = {name: profile.settings for name, profile in boards.items()}
    paths.inventory.write_text(plan.inventory_yaml(everyone, paths.client_key, paths.known_hosts, settings))
    print(f"lab: {len(everyone)} device(s) up; inventory {paths.inventory}", flush=True)
    return everyone


def down(paths: LabPaths) -> list[str]:
    """Remove lab containers, the inventory and lab state; keep image and rootfs caches."""
    removed = [info.name for info in engine.containers(plan.selector()) if engine.remove(info.name)]
    for name in removed:
        print(f"lab: removed {name}", flush=True)
    paths.inventory.unlink(missing_ok=True)
    for leftover in (paths.client_key, paths.client_key.with_suffix(".pub"), paths.known_hosts):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(paths.state / "devices", ignore_errors=True)
    print("lab: down (kept caches: build/rootfs, images edgefleet/lab-*)", flush=True)
    return removed


def status(paths: LabPaths) -> list[DeviceStatus]:
    """Return every lab container with its state, ssh port and arch."""
    result = []
    for info in engine.containers(plan.selector()):
        device = _device(info)
        result.append(DeviceStatus(device.name, info.name, info.status, device.arch,
                                   device.ssh_port, device.runtime_port, device.board))
    return result


def running_device(paths: LabPaths, name: str) -> plan.LabDevice:
    """Return lab device `name` if it is up in this slot, else fail naming the ones that are."""
    devices = {d.name: (d, info) for info in engine.containers(plan.selector()) for d in [_device(info)]}
    if name not in devices or devices[name][1].status != "running":
        known = ", ".join(n for n, (_, info) in sorted(devices.items()) if info.status == "running") or "none"
        raise plan.LabInputError(f"device: no running lab device {name!r} in slot {plan.slot()} (running: {known})")
    return devices[name][0]


class LabBusy(EdgefleetError, RuntimeError):
    """A lab is up already; a session would take it over."""


@contextmanager
def session(paths: LabPaths, devices: int = 1, arch: str = "amd64", board: str | None = None):
    """Bring up a lab of its own for a `with` block, then remove it; refuse if one is up already."""
    if status(paths):
        raise LabBusy("a lab is already up; run `invoke lab.down` first")
    up(paths, devices=devices, arch=arch, board=board)
    try:
        yield paths
    finally:
        down(paths)
