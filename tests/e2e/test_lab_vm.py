"""The whole flow on one full arm64 VM (qemu-system-aarch64, real kernel, systemd, sshd, sudo):
image (cached), boot, `invoke deploy --target lab-vm`, health gate, arm64 embeddings against
x86, a second release, a power cycle the service survives by itself, `invoke rollback`.

The VM's pid is taken when it boots and the finalizer stops it (QMP power-down, quit, then
SIGKILL by that pid). Set EDGEFLEET_LAB_SLOT to move its SSH port (2190 + slot). Each phase's
time is printed at the end (pytest -s, or the captured output of a failure).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from e2e_lab import Phases, booted_vm, vm_spec

from edgefleet.deploy import Device, service_call
from edgefleet.deploy.health import wait_ready
from edgefleet.inventory import load_inventory
from edgefleet.lab import vm as labvm
from edgefleet.lab import vmplan
from edgefleet.transport import connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "build" / "bundles" / "all-minilm-l6-v2-int8"
# the docker variant on the 16K-page kernel (the Pi 5's), as test_lab_vm_image.py boots: one VM
# image (built once, the slowest step under emulation) serves both e2e tests; a venv deploy does not
# mind docker beside it
SPEC = vm_spec()
KERNEL = SPEC.kernel
NAME = SPEC.target_name
READY_TIMEOUT_S = 600.0  # ORT's first load under TCG on a loaded 2-core host


@pytest.fixture(scope="module")
def phases():
    record = Phases(KERNEL)
    yield record
    print(f"lab-vm e2e phases: {record.report()}", flush=True)
    out = REPO / "build" / "reports"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lab-vm-e2e-{KERNEL}.json").write_text(record.report() + "\n")


@pytest.fixture(scope="module")
def bundle():
    """The MiniLM INT8 bundle, made the way the demo makes it when this run has none yet."""
    if not (BUNDLE / "bundle.json").is_file():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        for task in ("model.export", "model.quantize"):
            subprocess.run([str(REPO / ".venv" / "bin" / "invoke"), task], cwd=REPO, env=env, check=True,
                           timeout=1800)
    return BUNDLE


@pytest.fixture(scope="module")
def vm(tmp_path_factory, phases):
    """Boot the VM on a fresh overlay with its inventory in a private targets dir; always stop it."""
    paths = labvm.VmPaths(build_dir=REPO / "build", targets_dir=tmp_path_factory.mktemp("targets"))
    booted = booted_vm(paths, SPEC, phases, "image")
    yield from _as_venv_target(booted, paths)


def _as_venv_target(booted, paths: labvm.VmPaths):
    """Pass `booted_vm`'s paths on once the inventory ships a venv (the docker variant's target
    ships an image; this test is about the venv path), then let it stop the VM."""
    for value in booted:
        document = yaml.safe_load(paths.inventory.read_text())
        document["devices"][NAME].pop("ship", None)
        paths.inventory.write_text(yaml.safe_dump(document, sort_keys=False))
        yield value


def invoke(paths: labvm.VmPaths, *args: str, timeout: float = 1800) -> str:
    env = {**os.environ, "INVOKE_EDGEFLEET_TARGETS_DIR": str(paths.targets_dir), "COLUMNS": "200"}
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "invoke"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"invoke {' '.join(args)} failed:\n{out[-4000:]}"
    return out


def target(paths: labvm.VmPaths):
    return load_inventory(paths.targets_dir).target(NAME)


def on_vm(paths: labvm.VmPaths, command: str) -> str:
    conn = connect(target(paths))
    try:
        return conn.run(command, hide=True, warn=True, in_stream=False).stdout.strip()
    finally:
        conn.close()


def call_service(paths: labvm.VmPaths, path: str, payload=None, timeout: float = 120.0):
    tgt = target(paths)
    conn = connect(tgt)
    try:
        return service_call(Device(conn, tgt))(path, payload, timeout)
    finally:
        conn.close()


def x86_embeddings(texts: list[str]) -> np.ndarray:
    """Embed each text on this (x86) host with the same runtime code, one text per call."""
    sys.path.insert(0, str(REPO / "payload"))
    try:
        import edge_runtime
        runtime = edge_runtime.load(BUNDLE)
        return np.vstack([runtime.embed([t]) for t in texts])
    finally:
        sys.path.remove(str(REPO / "payload"))


def released(out: str) -> str:
    match = re.search(rf"{NAME}: (?:deployed|unchanged) (r-[0-9a-f]{{12}})", out)
    assert match, out[-3000:]
    return match.group(1)


def test_deploy_reboot_rollback_on_arm64_vm(bundle, vm, phases):
    paths = vm
    assert on_vm(paths, "uname -m") == "aarch64"
    page = on_vm(paths, "getconf PAGESIZE")
    assert page == {"4k": "4096", "16k": "16384"}[KERNEL]

    # the deploy user is not root and has no general sudo: only the listed commands
    assert on_vm(paths, "id -un") == vmplan.DEPLOY_USER
    assert on_vm(paths, "sudo -n true 2>&1; echo exit=$?").endswith("exit=1")
    listed = on_vm(paths, "sudo -n -l")
    assert "/usr/bin/systemctl daemon-reload" in listed and "ALL) NOPASSWD: ALL" not in listed

    # -- first release --------------------------------------------------------------------------
    started = time.monotonic()
    out = invoke(paths, "deploy", "--target", NAME)
    phases.mark("deploy_first", started)
    first = released(out)
    gate = re.search(r"healthy, ready after ([\d.]+) s, golden min cosine ([\d.]+).*emulated: latency reported, not judged", out)
    assert gate, out[-3000:]
    phases.seconds["health_gate_ready_first"] = float(gate.group(1))

    # systemd runs it as the unprivileged service user with no capabilities
    assert on_vm(paths, "systemctl is-active edgefleet-runtime.service") == "active"
    main_pid = on_vm(paths, "systemctl show -p MainPID --value edgefleet-runtime.service")
    status = on_vm(paths, f"cat /proc/{main_pid}/status")
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
    assert on_vm(paths, f"getent passwd {uid} | cut -d: -f1") == "edgefleet"
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M)

    # the golden inputs on arm64 (through the service) against x86 (this host, same code)
    golden = json.loads((BUNDLE / "bundle.json").read_text())["golden"]
    started = time.monotonic()
    arm = []
    for text in golden["texts"]:
        code, body = call_service(paths, "/v1/embed", {"texts": [text]})
        assert code == 200, body
        arm.extend(body["embeddings"])
    phases.mark("embed_golden_arm64", started)
    arm, x86 = np.asarray(arm, dtype=np.float64), x86_embeddings(golden["texts"]).astype(np.float64)
    cosines = (arm * x86).sum(axis=1) / (np.linalg.norm(arm, axis=1) * np.linalg.norm(x86, axis=1))
    print(f"arm64 vs x86 cosine: min {cosines.min():.6f}, mean {cosines.mean():.6f}", flush=True)
    phases.seconds["arm64_vs_x86_min_cosine"] = round(float(cosines.min()), 6)
    # Issue #8's goal, every golden text >= 0.9999. Dynamic INT8 re-quantizes activations per
    # call, so a last-bit difference between the two architectures' float kernels can flip an
    # activation's rounding and grow (format 3: 0.99982 on one text); the arch-stable graph
    # (quantizer format 4, edgefleet/model/stable.py) uses only ops that give the same bits on
    # both, 1.000000 under qemu-user on the goldens and 40 more texts.
    assert cosines.min() >= 0.9999, cosines

    # -- second release: a config change (one thread) makes a new release -------------------------
    inventory_file = paths.inventory
    document = yaml.safe_load(inventory_file.read_text())
    document["devices"][NAME]["runtime"] = {"threads": 1}
    inventory_file.write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.monotonic()
    second = released(invoke(paths, "deploy", "--target", NAME))
    phases.mark("deploy_second", started)
    assert second != first

    # -- power cycle: the service and the tuning unit come back by themselves ---------------------
    boot_id = on_vm(paths, "cat /proc/sys/kernel/random/boot_id")
    phases.seconds["reboot_to_ssh"] = round(labvm.reboot(paths, timeout=300), 1)
    started = time.monotonic()
    assert on_vm(paths, "cat /proc/sys/kernel/random/boot_id") != boot_id
    tgt = target(paths)
    conn = connect(tgt)
    try:
        wait_ready(service_call(Device(conn, tgt)), READY_TIMEOUT_S)
    finally:
        conn.close()
    phases.mark("service_ready_after_reboot", started)
    assert on_vm(paths, "systemctl is-enabled edgefleet-runtime.service edgefleet-tuning.service").split() == [
        "enabled", "enabled"]
    assert on_vm(paths, "systemctl is-active edgefleet-tuning.service") == "active"
    assert on_vm(paths, "systemctl show -p Result --value edgefleet-tuning.service") == "success"
    code, info = call_service(paths, "/v1/info")
    assert code == 200 and info["release"] == second

    # -- roll back to the first release: it serves again ------------------------------------------
    started = time.monotonic()
    out = invoke(paths, "rollback", "--target", NAME)
    phases.mark("rollback", started)
    assert f"-> {first}" in out and "rolled back" in out, out[-3000:]
    assert on_vm(paths, f"readlink {tgt.settings.root}/current") == f"releases/{first}"
    code, info = call_service(paths, "/v1/info")
    assert code == 200 and info["release"] == first
    code, body = call_service(paths, "/v1/embed", {"texts": [golden["texts"][0]]})
    assert code == 200 and len(body["embeddings"][0]) == len(golden["embeddings"][0])
