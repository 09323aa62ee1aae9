"""Tasks for the lab: `lab.up`, `lab.down`, `lab.status`, `lab.fault`."""

from __future__ import annotations

import json
from dataclasses import asdict

from invoke import Collection, Exit, task

from edgefleet import lab, paths


def _lab_paths(c) -> lab.LabPaths:
    return lab.LabPaths(build_dir=paths.build_dir(c), targets_dir=paths.targets_dir(c))


@task(help={
    "devices": "number of simulated devices, lab-01..lab-NN (default 1)",
    "arch": "arm64 (emulated with qemu-user, default) or amd64 (native, fast)",
    "timeout": "seconds to wait for SSH and systemd (default 120 amd64, 300 arm64)",
})
def up(c, devices=1, arch="arm64", timeout=0):
    """Start lab devices and write their inventory (targets/lab.yaml)."""
    lab.up(_lab_paths(c), devices=int(devices), arch=arch, timeout=float(timeout) or None)


@task
def down(c):
    """Remove the lab's containers, inventory and state (image caches stay)."""
    lab.down(_lab_paths(c))


@task(help={"json": "print one JSON document instead of a table"})
def status(c, json_=False):
    """Show each lab device: container state, arch, ssh and runtime ports."""
    devices = lab.status(_lab_paths(c))
    if json_:
        print(json.dumps({"devices": [asdict(d) for d in devices]}, indent=2))
        return
    if not devices:
        print("lab: no devices")
    for d in devices:
        print(f"{d.name:8} {d.state:9} {d.arch:6} ssh 127.0.0.1:{d.ssh_port}  "
              f"runtime :{d.runtime_port}  ({d.container})")


@task(help={
    "device": "lab device name (lab-NN) in this lab slot (EDGEFLEET_LAB_SLOT)",
    "knob": "sshd-stop | sshd-start | sshd-kill | disk-small | disk-restore | disk-fill | disk-free | "
            "sshd-kill-on-upload | disk-fill-on-upload (armed now, strike during the next upload)",
    "path": "for disk-* and *-on-upload: the device root it acts on (default /opt/edgefleet)",
    "mb": "for disk-small: size of the small filesystem in MiB (default 64)",
    "leave_mb": "for disk-fill: MiB left free (default 1)",
})
def fault(c, device, knob, path="/opt/edgefleet", mb=64, leave_mb="1"):
    """Inject a fault into a lab device: stop/start/kill sshd, a small or full disk."""
    from edgefleet.engine import EngineError
    from edgefleet.lab import faults

    if knob not in faults.KNOBS:
        raise Exit(f"error: --knob {knob!r}: expected one of {', '.join(faults.KNOBS)}", code=2)
    fn, wants = faults.KNOBS[knob]
    given = {"path": path, "mb": int(mb), "leave_mb": float(leave_mb)}
    try:
        fn(device, *(given[w] for w in wants))
    except (faults.FaultError, EngineError) as exc:
        raise Exit(f"error: {exc}", code=1) from None
    except Exception as exc:  # docker's NotFound for a device that is not up
        raise Exit(f"error: {device}: {exc}", code=1) from None
    print(f"lab: {knob} applied to {device}")


ns = Collection("lab", up, down, status, fault)
