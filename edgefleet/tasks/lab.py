"""Lab tasks: `lab.up`, `lab.down`, `lab.status`, `lab.heat`, `lab.fault`; the VM: `lab.vm.up|down|ssh|status`."""

from __future__ import annotations

import json
from dataclasses import asdict

from invoke import Collection

from edgefleet import lab, paths
from edgefleet.errors import EdgefleetError
from edgefleet.lab import knobs, vmplan
from edgefleet.lab import vm as labvm
from edgefleet.lab.plan import ROUND_ROBIN

from ._errors import UsageError, exits_on_user_error, require
from ._task import task


def _lab_paths(c) -> lab.LabPaths:
    return lab.LabPaths(build_dir=paths.build_dir(c), targets_dir=paths.targets_dir(c))


@task(help={
    "devices": "number of simulated devices, lab-01..lab-NN (default 1)",
    "arch": "arm64 (emulated with qemu-user, default) or amd64 (native, fast)",
    "timeout": "seconds to wait for SSH and systemd (default 120 amd64, 300 arm64)",
    "board": f"one board profile for every device (e.g. qemu-virt); default round-robin {', '.join(ROUND_ROBIN)}",
})
@exits_on_user_error
def up(c, devices=1, arch="arm64", timeout=0, board=None):
    """Start lab devices and write their inventory (targets/lab.yaml)."""
    lab.up(_lab_paths(c), devices=int(devices), arch=arch, timeout=float(timeout) or None, board=board)


@task
@exits_on_user_error
def down(c):
    """Remove the lab's containers, inventory and state (image caches stay)."""
    lab.down(_lab_paths(c))


@task(help={"json": "print one JSON document instead of a table"})
@exits_on_user_error
def status(c, json_=False):
    """Show each lab device: container state, arch, ssh and runtime ports."""
    devices = lab.status(_lab_paths(c))
    if json_:
        print(json.dumps({"devices": [asdict(d) for d in devices]}, indent=2))
        return
    if not devices:
        print("lab: no devices")
    for d in devices:
        print(f"{d.name:8} {d.state:9} {d.arch:6} {d.board:10} ssh 127.0.0.1:{d.ssh_port}  "
              f"runtime :{d.runtime_port}  ({d.container})")


@task(help={
    "device": "lab device, e.g. lab-02",
    "celsius": "temperature to set, e.g. 85 (45 is the idle value lab.up sets)",
    "zone": "one thermal zone: its number, thermal_zoneN or its type (default: every zone)",
})
@exits_on_user_error
def heat(c, device=None, celsius=None, zone=None):
    """Set a lab device's fake thermal zone(s) to a temperature (the runtime's guard sees it)."""
    device = require(device, "--device", "lab.heat")
    degrees = _number(require(celsius, "--celsius", "lab.heat"), "--celsius")
    zones = knobs.heat(_lab_paths(c), device, degrees, zone)
    print(f"lab: {device} {', '.join(zones)} -> {degrees:.1f} C")


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a number") from None


def _vm_paths(c) -> labvm.VmPaths:
    return labvm.VmPaths(build_dir=paths.build_dir(c), targets_dir=paths.targets_dir(c))


@task(name="up", help={
    "kernel": "4k (linux-image-arm64, default) or 16k (linux-image-arm64-16k, the Pi 5's page size)",
    "cpus": "vCPUs (default 4)",
    "memory": "MB of RAM (default 2048)",
    "timeout": "seconds to wait for SSH and systemd (default 300)",
    "docker": "the variant with Debian's docker engine, as target lab-vm-docker (ship: image)",
})
@exits_on_user_error
def vm_up(c, kernel="4k", cpus=4, memory=2048, timeout=0, docker=False):
    """Boot the arm64 VM (image built or cached) as target lab-vm and write targets/lab-vm.yaml."""
    spec = vmplan.VmSpec(kernel=kernel, cpus=int(cpus), memory_mb=int(memory), docker=bool(docker))
    labvm.up(_vm_paths(c), spec, timeout=float(timeout) or None)


@task(name="down")
@exits_on_user_error
def vm_down(c):
    """Power the VM off (QMP power button, then quit), remove its overlay and inventory."""
    labvm.down(_vm_paths(c))


@task(name="ssh", help={"command": "run this instead of an interactive shell"})
@exits_on_user_error
def vm_ssh(c, command=""):
    """Open a shell on the VM as the deploy user (host key checked against the lab's known_hosts)."""
    vm_paths = _vm_paths(c)
    if labvm.pid(vm_paths) is None:
        raise EdgefleetError("lab.vm.ssh: the VM is not running; start it with `invoke lab.vm.up`")
    argv = labvm.ssh_argv(vm_paths, command)
    c.run(vmplan.describe(argv), pty=not command, warn=True)


@task(name="status", help={"json": "print one JSON document instead of a line"})
@exits_on_user_error
def vm_status(c, json_=False):
    """Show whether the VM runs: pid, ssh port, image and systemd's state."""
    state = labvm.status(_vm_paths(c))
    if json_:
        print(json.dumps(asdict(state), indent=2))
    elif not state.running:
        print(f"{state.name}: not running (ssh port would be 127.0.0.1:{state.ssh_port})")
    else:
        print(f"{state.name}: running, pid {state.pid}, ssh 127.0.0.1:{state.ssh_port}, "
              f"systemd {state.system}, image {state.image}")


vm = Collection("vm")
for _task in (vm_up, vm_down, vm_ssh, vm_status):
    vm.add_task(_task)


@task(help={
    "device": "lab device name (lab-NN) in this lab slot (EDGEFLEET_LAB_SLOT)",
    "knob": "sshd-stop | sshd-start | sshd-kill | disk-small | disk-restore | disk-fill | disk-free | "
            "sshd-kill-on-upload | disk-fill-on-upload (armed now, strike during the next upload)",
    "path": "for disk-* and *-on-upload: the device root it acts on (default /opt/edgefleet)",
    "mb": "for disk-small: size of the small filesystem in MiB (default 64)",
    "leave_mb": "for disk-fill: MiB left free (default 1)",
})
@exits_on_user_error
def fault(c, device=None, knob=None, path="/opt/edgefleet", mb=64, leave_mb="1"):
    """Inject a fault into a lab device: stop/start/kill sshd, a small or full disk."""
    from edgefleet.lab import faults

    device = require(device, "--device", "lab.fault")
    knob = require(knob, "--knob", "lab.fault")
    if knob not in faults.KNOBS:
        raise UsageError(f"--knob {knob!r}: expected one of {', '.join(faults.KNOBS)}")
    apply_knob, wants = faults.KNOBS[knob]
    given = {"path": path, "mb": int(mb), "leave_mb": _number(str(leave_mb), "--leave-mb")}
    apply_knob(device, *(given[w] for w in wants))
    print(f"lab: {knob} applied to {device}")


ns = Collection("lab", up, down, status, heat, fault, vm)
