"""The lab VM: build its image (cached by recipe hash), boot it, stop it, write its inventory.

The one place that talks to QEMU (qemu-system-aarch64, qemu-img, QMP). Image files live in
build/lab/cache/vm-<kernel>-<hash>/ with the host key made at build time and the client key
the deploy user accepts; each run gets a fresh qcow2 overlay in build/lab/vm/ (kept across a
`reboot`, removed by `down`). The QEMU process is found by its pidfile and stopped by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.lab import image, keys, plan, probe, vmplan
from edgefleet.paths import repo_root

__all__ = ["VmPaths", "VmImage", "VmStatus", "ensure_image", "up", "down", "reboot", "status", "pid", "is_ours",
           "ssh_argv"]

BOOT_TIMEOUT_S = 300.0
POWERDOWN_TIMEOUT_S = 90.0
RECIPE_FILES = ("build.sh", "packages.txt")
DOCKER_PACKAGES = "packages-docker.txt"  # the docker variant's packages on top of packages.txt


@dataclass(frozen=True)
class VmPaths:
    """Where the VM keeps its image cache (build/lab/cache) and run state (build/lab/vm)."""

    build_dir: Path
    targets_dir: Path

    @property
    def cache(self) -> Path:
        return self.build_dir / "lab" / "cache"

    @property
    def state(self) -> Path:
        return self.build_dir / "lab" / "vm"

    @property
    def overlay(self) -> Path:
        return self.state / "overlay.qcow2"

    @property
    def qmp(self) -> Path:
        return self.state / "qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.state / "serial.log"

    @property
    def pidfile(self) -> Path:
        return self.state / "qemu.pid"

    @property
    def image_record(self) -> Path:
        return self.state / "image"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.targets_dir / vmplan.INVENTORY_FILE


@dataclass(frozen=True)
class VmImage:
    """A built image: kernel, initrd, raw ext4 disk, and the keys made with it."""

    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def host_public(self) -> str:
        return keys.public_key(self.directory / "ssh_host_ed25519_key")

    @property
    def kernel_release(self) -> str:
        return (self.directory / "kernel-release").read_text().strip()


@dataclass(frozen=True)
class VmStatus:
    """The VM as `lab.vm status` reports it."""

    name: str
    running: bool
    pid: int | None
    ssh_port: int
    image: str | None
    system: str | None


def recipe_dir() -> Path:
    """Return docker/lab-vm in the repo."""
    return repo_root() / "docker" / "lab-vm"


def recipe_hash(spec: vmplan.VmSpec) -> str:
    """Return the image's cache key: recipe files, generated provisioning text, kernel package."""
    files = image.recipe_hash("arm64", RECIPE_FILES + ((DOCKER_PACKAGES,) if spec.docker else ()), recipe_dir())
    text = f"{files}\0{spec.kernel_package}\0{vmplan.recipe_text(docker=spec.docker)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recipe_for(spec: vmplan.VmSpec, staging: Path) -> Path:
    """Return the recipe dir build.sh runs from: docker/lab-vm, or for the docker variant a copy
    whose packages.txt adds packages-docker.txt (the plain recipe, and its cache key, stay as is)."""
    if not spec.docker:
        return recipe_dir()
    out = staging / "recipe"
    out.mkdir()
    shutil.copy2(recipe_dir() / "build.sh", out / "build.sh")
    (out / "packages.txt").write_text((recipe_dir() / "packages.txt").read_text()
                                      + (recipe_dir() / DOCKER_PACKAGES).read_text())
    return out


def ensure_image(paths: VmPaths, spec: vmplan.VmSpec) -> VmImage:
    """Return the cached image for `spec`, building it (debootstrap + mkfs.ext4 -d) when missing."""
    built = VmImage(paths.cache / f"vm-{spec.variant}-{recipe_hash(spec)}")
    if built.disk.is_file() and built.client_key.is_file():
        print(f"lab vm: image cached ({built.directory.name}, kernel {built.kernel_release})", flush=True)
        return built
    started = time.monotonic()
    paths.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.cache, prefix="vm-provision.") as tmp:
        staging = Path(tmp)
        host_private, host_public = keys.ensure_keypair(staging / "ssh_host_ed25519_key", f"root@{vmplan.NAME}")
        _, client_public = keys.ensure_keypair(staging / "id_ed25519", "edgefleet-lab-vm")
        files = staging / "files"
        for rel, (content, mode) in vmplan.provision_files(host_private, host_public, client_public,
                                                              docker=spec.docker).items():
            target = files / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
        (files / "home" / vmplan.DEPLOY_USER / ".ssh").chmod(0o700)
        (staging / "deploy-user").write_text(vmplan.DEPLOY_USER)
        (staging / "root-dir").write_text(vmplan.DEVICE_ROOT)
        argv = ["bash", str(_recipe_for(spec, staging) / "build.sh"), spec.kernel_package, str(staging),
                str(built.directory), str(paths.cache / "debs-arm64-vm")]
        if subprocess.run(argv).returncode != 0:
            raise RuntimeError(f"lab vm: image recipe failed for {spec.kernel_package} (see output above)")
        for name in ("ssh_host_ed25519_key.pub", "id_ed25519", "id_ed25519.pub"):
            shutil.copy2(staging / name, built.directory / name)
    print(f"lab vm: image {built.directory.name} built in {time.monotonic() - started:.0f} s", flush=True)
    return built


def pid(paths: VmPaths) -> int | None:
    """Return the pid of this lab's running QEMU, or None (a stale pidfile is ignored)."""
    try:
        number = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return number if is_ours(number, paths) else None


def is_ours(number: int, paths: VmPaths) -> bool:
    """Return whether process `number` is this lab's QEMU (its command line names our pidfile)."""
    try:
        cmdline = Path(f"/proc/{number}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(paths.pidfile).encode() in cmdline


def _qmp(paths: VmPaths, command: str, timeout: float = 10.0) -> dict:
    """Run one QMP command on the VM's monitor socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(paths.qmp))
        reader = sock.makefile("r")
        json.loads(reader.readline())  # greeting
        for execute in ("qmp_capabilities", command):
            sock.sendall(json.dumps({"execute": execute}).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    break  # skip asynchronous events
            if "error" in reply:
                raise RuntimeError(f"lab vm: QMP {execute}: {reply['error'].get('desc')}")
        return reply


def _wait_exit(number: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{number}").exists():
            return True
        time.sleep(0.5)
    return not Path(f"/proc/{number}").exists()


def _wait_ssh(paths: VmPaths, built: VmImage, timeout: float) -> float:
    started = time.monotonic()
    last = "not asked yet"
    while time.monotonic() - started < timeout:
        if pid(paths) is None:
            raise RuntimeError(f"lab vm: QEMU exited during boot; console:\n{_console_tail(paths)}")
        last = probe.system_state(vmplan.ssh_port(), built.client_key, paths.known_hosts,
                                  user=vmplan.DEPLOY_USER)
        if last in probe.READY_STATES:
            return time.monotonic() - started
        time.sleep(2.0)
    raise TimeoutError(f"lab vm: not ready after {timeout:.0f} s (last: {last}); console:\n{_console_tail(paths)}")


def _console_tail(paths: VmPaths, lines: int = 25) -> str:
    try:
        return "\n".join(paths.serial_log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def _start(paths: VmPaths, spec: vmplan.VmSpec, built: VmImage) -> None:
    paths.qmp.unlink(missing_ok=True)
    argv = vmplan.qemu_argv(spec, built.kernel, built.initrd, paths.overlay, vmplan.ssh_port(),
                            paths.qmp, paths.serial_log, paths.pidfile)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lab vm: qemu-system-aarch64 failed (exit {proc.returncode}): {proc.stderr.strip()}")


def up(paths: VmPaths, spec: vmplan.VmSpec | None = None, timeout: float | None = None) -> VmStatus:
    """Build (or reuse) the image, boot the VM on a fresh overlay, wait for SSH, write its inventory."""
    spec = spec or vmplan.VmSpec()
    running = pid(paths)
    if running is not None:
        print(f"lab vm: running already (pid {running}); `invoke lab.vm down` first to change it", flush=True)
        return status(paths)
    built = ensure_image(paths, spec)
    paths.state.mkdir(parents=True, exist_ok=True)
    paths.overlay.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(built.disk),
                    str(paths.overlay)], check=True)
    paths.known_hosts.write_text(plan.known_hosts_line(vmplan.ssh_port(), built.host_public) + "\n")
    paths.image_record.write_text(f"{built.directory}\n{spec.kernel}\n{spec.cpus}\n{spec.memory_mb}\n"
                                  f"{int(spec.docker)}\n")
    paths.serial_log.unlink(missing_ok=True)
    t0 = time.monotonic()
    _start(paths, spec, built)
    print(f"lab vm: booting {spec.target_name} (pid {pid(paths)}, kernel {built.kernel_release}, "
          f"ssh 127.0.0.1:{vmplan.ssh_port()})", flush=True)
    try:
        waited = _wait_ssh(paths, built, timeout or BOOT_TIMEOUT_S)
    except BaseException:
        _stop(paths)
        raise
    print(f"lab vm: ready after {time.monotonic() - t0:.1f} s (ssh answered after {waited:.1f} s)", flush=True)
    paths.targets_dir.mkdir(parents=True, exist_ok=True)
    paths.inventory.write_text(vmplan.inventory_yaml(vmplan.ssh_port(), built.client_key, paths.known_hosts,
                                                     docker=spec.docker))
    print(f"lab vm: inventory {paths.inventory}", flush=True)
    return status(paths)


def _recorded(paths: VmPaths) -> tuple[VmImage, vmplan.VmSpec]:
    directory, kernel, cpus, memory, docker = (paths.image_record.read_text().split("\n") + ["0"])[:5]
    return VmImage(Path(directory)), vmplan.VmSpec(kernel=kernel, cpus=int(cpus), memory_mb=int(memory),
                                                   docker=docker == "1")


def _stop(paths: VmPaths, timeout: float = POWERDOWN_TIMEOUT_S) -> str:
    """Stop QEMU: ACPI power button over QMP, `quit` after `timeout`, SIGKILL by pid last."""
    number = pid(paths)
    if number is None:
        return "not running"
    try:
        _qmp(paths, "system_powerdown")
        if _wait_exit(number, timeout):
            return "powered down"
        _qmp(paths, "quit")
        if _wait_exit(number, 15):
            return f"quit (no clean power-down in {timeout:.0f} s)"
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"lab vm: QMP failed ({exc}); killing pid {number}", flush=True)
    os.kill(number, signal.SIGKILL)
    _wait_exit(number, 10)
    return "killed"


def reboot(paths: VmPaths, timeout: float | None = None) -> float:
    """Power the VM off cleanly and boot it again on the same disk; return seconds until SSH."""
    built, spec = _recorded(paths)
    t0 = time.monotonic()
    print(f"lab vm: power-down: {_stop(paths)}", flush=True)
    _start(paths, spec, built)
    _wait_ssh(paths, built, timeout or BOOT_TIMEOUT_S)
    seconds = time.monotonic() - t0
    print(f"lab vm: rebooted, ready after {seconds:.1f} s", flush=True)
    return seconds


def ssh_argv(paths: VmPaths, command: str = "") -> list[str]:
    """Return an OpenSSH command line to the VM as the deploy user (strict host key check)."""
    built, _ = _recorded(paths)
    return ["ssh", "-i", str(built.client_key), "-p", str(vmplan.ssh_port()),
            "-o", f"UserKnownHostsFile={paths.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", f"{vmplan.DEPLOY_USER}@127.0.0.1", *([command] if command else [])]


def down(paths: VmPaths) -> str:
    """Stop the VM (clean power-down first), remove its overlay, state and inventory; keep the image."""
    how = _stop(paths)
    print(f"lab vm: {how}", flush=True)
    paths.inventory.unlink(missing_ok=True)
    shutil.rmtree(paths.state, ignore_errors=True)
    return how


def status(paths: VmPaths) -> VmStatus:
    """Return whether the VM runs, its pid and port, its image and systemd's state."""
    number = pid(paths)
    built = _recorded(paths)[0] if paths.image_record.is_file() else None
    system = None
    if number is not None and built is not None:
        system = probe.system_state(vmplan.ssh_port(), built.client_key, paths.known_hosts,
                                    user=vmplan.DEPLOY_USER)
    name = _recorded(paths)[1].target_name if paths.image_record.is_file() else vmplan.NAME
    return VmStatus(name, number is not None, number, vmplan.ssh_port(),
                    built.directory.name if built else None, system)
