"""Wall time of each phase of an end-to-end test, printed at the end (under load: orders of magnitude only)."""

from __future__ import annotations

import json
import time


class Phases:
    """Seconds per phase, plus whatever a test records beside them (`seconds[...] = value`)."""

    def __init__(self, kernel: str):
        self.seconds: dict[str, float] = {}
        self.kernel = kernel
        self._t0 = time.monotonic()

    def mark(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 1)
        print(f"phase {name}: {self.seconds[name]} s", flush=True)

    def report(self) -> str:
        total = round(time.monotonic() - self._t0, 1)
        return json.dumps({**self.seconds, "total": total, "kernel": self.kernel})


def booted_vm(paths, spec, phases: Phases, image_phase: str = "image"):
    """Build or reuse the VM image, boot it on a fresh overlay, yield `paths`; always stop it.

    A generator for a module fixture (`yield from booted_vm(...)`): the phases `image_phase`,
    `boot` and `shutdown` are marked; QEMU is SIGKILLed by pid if a clean power-down failed.
    """
    import os
    import signal

    import pytest

    from edgefleet.lab import vm as labvm

    if labvm.pid(paths) is not None:
        pytest.fail(f"a lab VM is already running (pid {labvm.pid(paths)}); run `invoke lab.vm.down` first")
    started = time.monotonic()
    wait_prebuild()
    labvm.ensure_image(paths, spec)
    phases.mark(image_phase, started)
    started = time.monotonic()
    try:
        labvm.up(paths, spec, timeout=300)
        phases.mark("boot", started)
        yield paths
    finally:
        started = time.monotonic()
        qemu_pid = labvm.pid(paths)  # the current one: a reboot starts a new QEMU
        labvm.down(paths)
        if qemu_pid is not None and labvm.is_ours(qemu_pid, paths):
            os.kill(qemu_pid, signal.SIGKILL)
        phases.mark("shutdown", started)


_prebuild: dict = {}  # the background build of the VM image, started at collection (tests/conftest.py)


def vm_spec():
    """The VM both e2e VM tests boot: the 16K-page docker variant, so ONE image serves both
    (EDGEFLEET_VM_KERNEL=4k, EDGEFLEET_VM_PLAIN=1 choose another)."""
    import os

    from edgefleet.lab import vmplan

    return vmplan.VmSpec(kernel=os.environ.get("EDGEFLEET_VM_KERNEL", "16k"),
                         docker=os.environ.get("EDGEFLEET_VM_PLAIN") != "1")


def start_prebuild(repo) -> None:
    """Build the VM image in a child process while the other tiers run (the e2e tests run last):
    on 2 cores the image's emulated package set-up overlaps the lab and unit tests' waits."""
    import subprocess
    import sys

    spec = vm_spec()
    code = ("import sys; from pathlib import Path; from edgefleet.lab import vm, vmplan; "
            "vm.ensure_image(vm.VmPaths(build_dir=Path(sys.argv[1]), targets_dir=Path(sys.argv[1]) / 'lab' / 'vm'), "
            f"vmplan.VmSpec(kernel={spec.kernel!r}, docker={spec.docker!r}))")
    reports = repo / "build" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    log = open(reports / "vm-prebuild.log", "wb")
    _prebuild["proc"] = subprocess.Popen([sys.executable, "-c", code, str(repo / "build")], cwd=repo,
                                         stdout=log, stderr=subprocess.STDOUT)
    _prebuild["log"] = log


def wait_prebuild(timeout: float = 3600.0) -> None:
    """Wait (bounded) for the background build, if one runs; a failed one is only logged: the
    caller's own ensure_image then builds (and fails loudly) as it would have."""
    proc = _prebuild.pop("proc", None)
    if proc is None:
        return
    try:
        code = proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait()
        code = "killed"
    _prebuild.pop("log").close()
    print(f"lab vm: background image build ended ({code})", flush=True)
