"""Pure parts of the lab: device names and ports, known_hosts lines, inventory and sshd text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError

__all__ = [
    "LabInputError", "ARCHES", "SLOT_ENV", "slot", "selector", "SSH_PORT_BASE", "RUNTIME_PORT_BASE", "MAX_DEVICES",
    "LABEL", "LabDevice",
    "ROUND_ROBIN", "LAB_PYTHON", "plan_devices", "container_name", "known_hosts_line", "sshd_config",
    "device_overrides", "inventory_yaml",
]

ARCHES = ("arm64", "amd64")
SSH_PORT_BASE = 2200
RUNTIME_PORT_BASE = 18080
MAX_DEVICES = 99
LABEL = "edgefleet.lab"
BOARD = "qemu-virt"
ROUND_ROBIN = ("pi5", "orin-nano", "rk3588")  # `lab.up` without --board: core layouts differ
LAB_PYTHON = "3.11"  # the lab image is Debian bookworm
EMULATED_READY_S = 600.0  # ORT under qemu-user is slow, most of all with many devices sharing few cores
SLOT_ENV = "EDGEFLEET_LAB_SLOT"
SLOTS = 10


class LabInputError(InputError, ValueError):
    """A lab request cannot work (an arch, a count, a board, a device, a zone); exit status 2."""


def slot() -> int:
    """Return this lab's slot (EDGEFLEET_LAB_SLOT, default 0): several labs can share a machine.

    Slot k owns containers `edgefleet-lab<k>-NN` (plain `edgefleet-lab-NN` for slot 0) and the
    port ranges SSH_PORT_BASE + 100k + i and RUNTIME_PORT_BASE + 100k + i.
    """
    raw = os.environ.get(SLOT_ENV, "0").strip() or "0"
    if not raw.isdigit() or not 0 <= int(raw) < SLOTS:
        raise LabInputError(f"{SLOT_ENV}: expected 0..{SLOTS - 1}, got {raw!r}")
    return int(raw)


def selector() -> str:
    """Return the docker label filter that selects this slot's containers."""
    return f"{LABEL}={slot()}"


@dataclass(frozen=True)
class LabDevice:
    """One simulated device: its target name, arch and the host ports it owns."""

    index: int
    arch: str
    board: str = BOARD

    @property
    def name(self) -> str:
        return f"lab-{self.index:02d}"

    @property
    def container(self) -> str:
        return container_name(self.index)

    @property
    def ssh_port(self) -> int:
        return SSH_PORT_BASE + 100 * slot() + self.index

    @property
    def runtime_port(self) -> int:
        return RUNTIME_PORT_BASE + 100 * slot() + self.index


def container_name(index: int) -> str:
    """Return the container name of lab device number `index` (1-based)."""
    number = slot()
    return f"edgefleet-lab{number or ''}-{index:02d}"


def plan_devices(count: int, arch: str, board: str | None = None) -> list[LabDevice]:
    """Return devices 1..count for an arch, boards round-robin over ROUND_ROBIN unless one is given."""
    if arch not in ARCHES:
        raise LabInputError(f"arch: expected one of {', '.join(ARCHES)}, got {arch!r}")
    if not 1 <= count <= MAX_DEVICES:
        raise LabInputError(f"devices: expected 1..{MAX_DEVICES}, got {count}")
    return [LabDevice(index, arch, board or ROUND_ROBIN[(index - 1) % len(ROUND_ROBIN)])
            for index in range(1, count + 1)]


def known_hosts_line(port: int, public_key: str, host: str = "127.0.0.1") -> str:
    """Return an OpenSSH known_hosts line for a host key served on host:port."""
    parts = public_key.split()
    if len(parts) < 2 or not parts[0].startswith("ssh-"):
        raise LabInputError(f"not an OpenSSH public key: {public_key[:40]!r}")
    address = host if port == 22 else f"[{host}]:{port}"
    return f"{address} {parts[0]} {parts[1]}"


def sshd_config(port: int, host: str = "127.0.0.1") -> str:
    """Return the per-device sshd drop-in: listen on one loopback port, one host key."""
    return (
        "# written by edgefleet.lab for this device\n"
        f"ListenAddress {host}:{port}\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
    )


def device_overrides(device: LabDevice, board_settings: dict) -> dict:
    """Return the settings a lab device overrides on its board profile, so the lab can deploy it.

    Only what the lab cannot be: its arch; the image's Python (a board on another Python gets
    the image's, so the packages are resolved for cp311 with the board's pins); no sudo (the lab
    logs in as root and its image has none); `emulated` (latency never judged) and, on arm64,
    a longer wait for /readyz. Cores, governor, thermal limits and zones stay the board's.
    """
    overrides: dict = {"arch": device.arch}
    if str(board_settings.get("python")) != LAB_PYTHON:
        overrides["python"] = LAB_PYTHON
    if board_settings.get("sudo"):
        overrides["sudo"] = False
    overrides["emulated"] = True
    runtime = {"port": device.runtime_port}
    ready = (board_settings.get("health") or {}).get("ready_timeout_s", 0)
    if device.arch == "arm64" and ready < EMULATED_READY_S:
        overrides["health"] = {"ready_timeout_s": EMULATED_READY_S}
    overrides["runtime"] = runtime
    return overrides


def inventory_yaml(devices: list[LabDevice], ssh_key: Path, known_hosts: Path,
                   board_settings: dict[str, dict]) -> str:
    """Return targets/lab.yaml text for the devices (absolute key and known_hosts paths).

    `board_settings`: board name -> its profile's settings, for `device_overrides`.
    """
    document = {
        "groups": {"lab": {"description": "simulated devices on this machine"}},
        "devices": {
            device.name: {
                "board": device.board,
                "host": "127.0.0.1",
                "port": device.ssh_port,
                "user": "root",
                "ssh_key": str(Path(ssh_key).resolve()),
                "known_hosts": str(Path(known_hosts).resolve()),
                "groups": ["lab"],
                **device_overrides(device, board_settings[device.board]),
            }
            for device in sorted(devices, key=lambda d: d.index)
        },
    }
    header = ("# written by `invoke lab.up`; removed by `invoke lab.down`\n"
              "# each device keeps its board's cores, governor and thermal limits; it overrides only\n"
              "# what the lab cannot be (arch, the image's python, no sudo as root, emulated)\n")
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
