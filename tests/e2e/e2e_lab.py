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
