"""Bring lab devices up and down: containers with systemd as PID 1 and sshd on loopback.

Privileges: docker's default seccomp profile plus CAP_SYS_ADMIN, which systemd needs to set
up the namespaces of the units it runs (ProtectSystem=, PrivateTmp=, ...): without it those
settings are silently not applied, and the lab would not test the hardened unit real boards
run. systemd needs its name=systemd cgroup writable, which the read-only bind of
/sys/fs/cgroup gives on this cgroup-v1 host (docker makes only the top mount read-only, the
hierarchies under it stay writable); /run and /run/lock are tmpfs as systemd expects. Both
mean root in a lab container can reach the host: a lab is for this machine's tests only.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefleet import engine
from edgefleet.lab import image, keys, plan, probe

__all__ = ["LabPaths", "DeviceStatus", "LabBusy", "up", "down", "status", "session"]

UP_TIMEOUT_S = {"amd64": 120.0, "arm64": 300.0}


@dataclass(frozen=True)
class LabPaths:
    """Where the lab keeps its state (build/lab) and writes its inventory (targets/lab.yaml)."""

    build_dir: Path
    targets_dir: Path

    @property
    def state(self) -> Path:
        return self.build_dir / "lab"

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


@dataclass(frozen=True)
class DeviceStatus:
    """One lab device as `lab.status` reports it."""

    name: str
    container: str
    state: str
    arch: str
    ssh_port: int
    runtime_port: int


def _spec(device: plan.LabDevice, tag: str) -> engine.ContainerSpec:
    env = {"container": "docker"}
    if device.arch == "arm64":
        env["QEMU_CPU"] = "neoverse-n1"
    return engine.ContainerSpec(
        name=device.container, image=tag,
        labels={plan.LABEL: str(plan.slot()), f"{plan.LABEL}.device": device.name,
                f"{plan.LABEL}.arch": device.arch, f"{plan.LABEL}.index": str(device.index)},
        environment=env,
        tmpfs={"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec"},
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}},
        cap_add=("SYS_ADMIN",),
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
        "/etc/edgefleet-lab": (f"{device.name} {device.arch}\n".encode(), 0o644),
    }


def _existing() -> dict[str, engine.ContainerInfo]:
    return {info.name: info for info in engine.containers(plan.selector())}


def _write_known_hosts(devices: list[plan.LabDevice], paths: LabPaths) -> None:
    lines = [plan.known_hosts_line(d.ssh_port, keys.public_key(paths.host_key(d)))
             for d in sorted(devices, key=lambda d: d.index)]
    paths.known_hosts.write_text("\n".join(lines) + "\n")


def _wait_ready(devices: list[plan.LabDevice], paths: LabPaths, timeout: float) -> None:
    started = time.monotonic()
    waiting = {d.name: d for d in devices}
    last: dict[str, str] = {}
    while waiting and time.monotonic() - started < timeout:
        for name, device in list(waiting.items()):
            last[name] = probe.system_state(device.ssh_port, paths.client_key, paths.known_hosts)
            if last[name] in probe.READY_STATES:
                print(f"lab: {name} ready ({last[name]}) after "
                      f"{time.monotonic() - started:.1f} s, ssh 127.0.0.1:{device.ssh_port}",
                      flush=True)
                del waiting[name]
        if waiting:
            time.sleep(1.0)
    if waiting:
        details = "\n".join(f"  {n}: {last.get(n)}\n{engine.logs(d.container, 10)}"
                            for n, d in waiting.items())
        raise TimeoutError(f"lab devices not ready after {timeout:.0f} s:\n{details}")


def up(paths: LabPaths, devices: int = 1, arch: str = "arm64",
       timeout: float | None = None) -> list[plan.LabDevice]:
    """Start lab devices 1..N (idempotent), wait until SSH and systemd answer, write inventory."""
    wanted = plan.plan_devices(devices, arch)
    existing = _existing()
    clash = [info.name for info in existing.values()
             if info.labels.get(f"{plan.LABEL}.arch", arch) != arch]
    if clash:
        raise RuntimeError(f"lab already has {', '.join(clash)} with another arch; "
                           "run `invoke lab.down` first")
    extra = [info for info in existing.values()
             if int(info.labels.get(f"{plan.LABEL}.index", "0")) > devices]
    everyone = wanted + [plan.LabDevice(int(i.labels[f"{plan.LABEL}.index"]), arch)
                         for i in extra]
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
        if info is None:
            engine.create_container(_spec(device, tag))
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
    paths.inventory.write_text(plan.inventory_yaml(everyone, paths.client_key, paths.known_hosts))
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
        device = plan.LabDevice(int(info.labels.get(f"{plan.LABEL}.index", "0")),
                                info.labels.get(f"{plan.LABEL}.arch", "?"))
        result.append(DeviceStatus(device.name, info.name, info.status, device.arch,
                                   device.ssh_port, device.runtime_port))
    return result


class LabBusy(RuntimeError):
    """A lab is up already; a session would take it over."""


@contextmanager
def session(paths: LabPaths, devices: int = 1, arch: str = "amd64"):
    """Bring up a lab of its own for a `with` block, then remove it; refuse if one is up already."""
    if status(paths):
        raise LabBusy("a lab is already up; run `invoke lab.down` first")
    up(paths, devices=devices, arch=arch)
    try:
        yield paths
    finally:
        down(paths)
