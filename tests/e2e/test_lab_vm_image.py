"""`ship: image` on a full arm64 VM with Debian's docker (16K-page kernel, the Pi 5's page size).

Builds two runtime images (the second differs by one payload line), boots the lab VM's docker
variant as target `lab-vm-docker`, then through the real `invoke deploy`: the first release
(image uploaded, sha256-verified, loaded, ID checked, health gate), the container's privileges
read back from the engine and from /proc, a no-op re-deploy (nothing uploaded or restarted),
a second release on the second image, `invoke rollback` to the first, which must serve
again from the first image, and a third release that prunes the second and its image. Phase times are printed at the end and written to
build/reports/lab-vm-image-e2e.json. EDGEFLEET_LAB_SLOT moves the VM's SSH port and the tags.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from e2e_lab import Phases, booted_vm

from edgefleet.deploy import Device, service_call
from edgefleet.image import build as image_build
from edgefleet.image.ship import shipped_image
from edgefleet.inventory import load_inventory
from edgefleet.lab import plan as labplan
from edgefleet.lab import vm as labvm
from edgefleet.lab import vmplan
from edgefleet.render import CONTAINER_NAME
from edgefleet.transport import connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
BUNDLE = BUILD / "bundles" / "all-minilm-l6-v2-int8"
NAME = vmplan.DOCKER_NAME
TAG = f"edgefleet/runtime-e2e:slot{labplan.slot()}"
TAG_B = f"{TAG}-b"
# deploys save at zstd -19 (fleets upload each image to many devices); this test saves its
# two images first at -9 (2 s instead of ~2 min here, 48 MB instead of 41 MB)
TEST_LEVEL = 9


@pytest.fixture(scope="module")
def phases():
    record = Phases("16k")
    yield record
    print(f"lab-vm-docker e2e phases: {record.report()}", flush=True)
    (BUILD / "reports").mkdir(parents=True, exist_ok=True)
    (BUILD / "reports" / "lab-vm-image-e2e.json").write_text(record.report() + "\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory, phases):
    """Build the two arm64 runtime images (local base) and save each as a device tarball."""
    if not (BUNDLE / "bundle.json").is_file():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        for task in ("model.export", "model.quantize"):
            subprocess.run([str(REPO / ".venv" / "bin" / "invoke"), task], cwd=REPO, env=env, check=True, timeout=1800)
    started = time.monotonic()
    run_invoke(None, "image.build", "--platform", "linux/arm64", "--base", "local", "--tag", TAG)
    payload = tmp_path_factory.mktemp("payload") / "edge_runtime"
    shutil.copytree(REPO / "payload" / "edge_runtime", payload, ignore=shutil.ignore_patterns("__pycache__"))
    with open(payload / "__init__.py", "a") as init:
        init.write("# the e2e test's second runtime image\n")
    image_build.build(BUILD, ["linux/arm64"], TAG_B, image_build.LOCAL_BASE, payload=payload)
    phases.mark("runtime_images_build", started)
    started = time.monotonic()
    shipped = [shipped_image(tag, "arm64", BUILD, level=TEST_LEVEL) for tag in (TAG, TAG_B)]
    phases.mark("runtime_images_save", started)
    assert shipped[0].image_id != shipped[1].image_id
    return shipped


@pytest.fixture(scope="module")
def vm(tmp_path_factory, phases):
    """Boot the docker variant on a fresh overlay, its inventory in a private dir; always stop it."""
    paths = labvm.VmPaths(build_dir=BUILD, targets_dir=tmp_path_factory.mktemp("targets"))
    yield from booted_vm(paths, vmplan.VmSpec(kernel="16k", docker=True), phases, "vm_image")


def run_invoke(paths: labvm.VmPaths | None, *args: str, tag: str = TAG, timeout: float = 1800) -> str:
    env = {**os.environ, "COLUMNS": "200", "INVOKE_EDGEFLEET_IMAGE_TAG": tag}
    if paths is not None:
        env["INVOKE_EDGEFLEET_TARGETS_DIR"] = str(paths.targets_dir)
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "invoke"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"invoke {' '.join(args)} failed:\n{out[-4000:]}"
    return out


def on_vm(paths: labvm.VmPaths, command: str) -> str:
    conn = connect(load_inventory(paths.targets_dir).target(NAME))
    try:
        return conn.run(command, hide=True, warn=True, in_stream=False).stdout.strip()
    finally:
        conn.close()


def call_service(paths: labvm.VmPaths, path: str, payload=None):
    tgt = load_inventory(paths.targets_dir).target(NAME)
    conn = connect(tgt)
    try:
        return service_call(Device(conn, tgt))(path, payload, 120.0)
    finally:
        conn.close()


def container(paths: labvm.VmPaths) -> dict:
    """Return the engine's view of the runtime's container (a command the deploy user's sudoers lists)."""
    return json.loads(on_vm(paths, f"sudo -n docker container inspect {CONTAINER_NAME}"))[0]


def device_images(paths: labvm.VmPaths) -> set[str]:
    return set(on_vm(paths, "sudo -n docker image ls --quiet --no-trunc").split())


def received_bytes(paths: labvm.VmPaths) -> int:
    """Return the bytes the VM's network interface received so far (guest side)."""
    lines = on_vm(paths, "cat /proc/net/dev").splitlines()
    return sum(int(line.split(":", 1)[1].split()[0]) for line in lines if line.strip().startswith("en"))


def released(out: str) -> str:
    match = re.search(rf"{NAME}: (?:deployed|unchanged) (r-[0-9a-f]{{12}})", out)
    assert match, out[-3000:]
    return match.group(1)


def test_image_deploy_noop_second_release_rollback(images, vm, phases):
    paths, (first_image, second_image) = vm, images
    assert on_vm(paths, "uname -m") == "aarch64" and on_vm(paths, "getconf PAGESIZE") == "16384"
    # the deploy user runs docker only through the fixed commands of its sudoers list
    assert on_vm(paths, "docker image ls 2>&1; echo exit=$?").endswith("exit=1")
    assert on_vm(paths, "sudo -n docker run --rm hello 2>&1; echo exit=$?").endswith("exit=1")
    assert on_vm(paths, "sudo -n docker image ls --quiet --no-trunc; echo exit=$?").endswith("exit=0")

    # -- first release: the image is uploaded, verified, loaded and its ID checked --------------
    started = time.monotonic()
    out = run_invoke(paths, "deploy", "--target", NAME)
    phases.mark("deploy_first", started)
    first = released(out)
    assert re.search(r"uploaded \d+ objects, [\d.]+ MB .* sha256 verified", out), out[-3000:]
    assert f"loaded image {first_image.image_id[:19]} into docker" in out, out[-3000:]
    gate = re.search(r"healthy, ready after ([\d.]+) s.*emulated: latency reported, not judged", out)
    assert gate, out[-3000:]
    phases.seconds["health_gate_ready_first"] = float(gate.group(1))
    assert first_image.image_id in device_images(paths)
    assert on_vm(paths, f"ls /opt/edgefleet/objects | grep -c {first_image.sha256}; true") == "0"  # dropped once loaded

    # -- least privilege, as the engine and the kernel see the running container ---------------
    info = container(paths)
    host = info["HostConfig"]
    assert info["Image"] == first_image.image_id and info["Name"] == f"/{CONTAINER_NAME}"
    assert info["Config"]["User"] == "10001:10001" and host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "host" and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False
    assert all(not m["RW"] for m in info["Mounts"]) and {Path(m["Destination"]).name for m in info["Mounts"]} == {
        "bundle", "runtime.yaml"}
    pid = info["State"]["Pid"]  # docker-init (--init); the runtime is its child
    child = on_vm(paths, f"cat /proc/{pid}/task/{pid}/children").split()[0]
    status = on_vm(paths, f"cat /proc/{child}/status")
    assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.M), status
    bounding = int(re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M).group(1), 16)
    effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M).group(1), 16)
    assert bounding == 0 and effective == 0, status  # no capability at all
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    root_mount = next(line for line in on_vm(paths, f"cat /proc/{child}/mountinfo").splitlines()
                      if line.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(","), root_mount
    code, served = call_service(paths, "/v1/info")
    assert code == 200 and served["release"] == first
    # the inventory asks for nice -5: allowed by the container's RLIMIT_NICE, not by a capability
    assert served.get("nice") == -5, served
    assert on_vm(paths, f"cut -d' ' -f19 /proc/{child}/stat").strip() == "-5"  # as the kernel sees it

    # -- no-op: nothing uploaded, nothing restarted ---------------------------------------------
    objects = on_vm(paths, "ls /opt/edgefleet/objects")
    started_at = info["State"]["StartedAt"]
    rx = received_bytes(paths)
    started = time.monotonic()
    out = run_invoke(paths, "deploy", "--target", NAME)
    phases.mark("deploy_noop", started)
    rx = received_bytes(paths) - rx
    phases.seconds["noop_bytes_to_vm"] = rx
    assert "nothing to do" in out and "uploaded" not in out and "loaded image" not in out, out[-3000:]
    assert released(out) == first and on_vm(paths, "ls /opt/edgefleet/objects") == objects
    assert container(paths)["State"]["StartedAt"] == started_at  # not restarted
    assert rx < 1_000_000, f"the no-op moved {rx} bytes to the VM"

    # -- second release on the second image -----------------------------------------------------
    started = time.monotonic()
    out = run_invoke(paths, "deploy", "--target", NAME, tag=TAG_B)
    phases.mark("deploy_second", started)
    second = released(out)
    assert second != first and f"loaded image {second_image.image_id[:19]}" in out, out[-3000:]
    assert container(paths)["Image"] == second_image.image_id
    assert {first_image.image_id, second_image.image_id} <= device_images(paths)  # the previous one stays

    # -- roll back: the first release serves again, from the first image ------------------------
    started = time.monotonic()
    out = run_invoke(paths, "rollback", "--target", NAME)
    phases.mark("rollback", started)
    assert f"-> {first}" in out and "rolled back" in out, out[-3000:]
    assert on_vm(paths, "readlink /opt/edgefleet/current") == f"releases/{first}"
    assert container(paths)["Image"] == first_image.image_id
    code, served = call_service(paths, "/v1/info")
    assert code == 200 and served["release"] == first
    golden = json.loads((BUNDLE / "bundle.json").read_text())["golden"]
    code, body = call_service(paths, "/v1/embed", {"texts": [golden["texts"][0]]})
    assert code == 200 and len(body["embeddings"][0]) == len(golden["embeddings"][0])

    # -- prune: a third release (a config change on the first image) keeping 2 releases drops
    # the second release and its image, which no kept release runs; the first image stays ------
    document = yaml.safe_load(paths.inventory.read_text())
    document["devices"][NAME].update(deploy={"keep_releases": 2}, runtime={"nice": -5, "log_level": "debug"})
    paths.inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.monotonic()
    out = run_invoke(paths, "deploy", "--target", NAME)
    phases.mark("deploy_third_prune", started)
    third = released(out)
    assert "uploaded" in out and "loaded image" not in out, out[-3000:]  # only runtime.yaml and manifest
    assert re.search(rf"pruned 1 old release\(s\) \({second}\), \d+ object\(s\), 0 package env\(s\), 1 image\(s\)", out), out[-3000:]
    images_left = device_images(paths)
    assert first_image.image_id in images_left and second_image.image_id not in images_left
    assert sorted(on_vm(paths, "ls /opt/edgefleet/releases").split()) == sorted([first, third])
