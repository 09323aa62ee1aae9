"""`ship: image`: the setting, the container unit, the release, the plan, prune's images (no SSH, no docker)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_deploy_plan import fake_bundle, fake_env

from edgefleet.deploy.facts import Facts, PlanError, facts_command, parse_facts
from edgefleet.deploy.plan import make_plan
from edgefleet.deploy.prune import unreferenced, unused_images
from edgefleet.deploy.release import ReleaseError, make_release
from edgefleet.image.ship import ShippedImage
from edgefleet.inventory import InventoryError, load_inventory
from edgefleet.lab import vmplan
from edgefleet.render import MAX_EXPOSURE, UNIT_NAME, check_rendered, render_target, security_exposure

REPO = Path(__file__).resolve().parents[2]
IMAGE_A = "sha256:" + "a" * 64
IMAGE_B = "sha256:" + "b" * 64


def inventory(tmp_path: Path, device: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "inv.yaml").write_text("devices:\n  d1:\n    board: qemu-virt\n    host: 127.0.0.1\n" + device)
    return tmp_path


def image_target(tmp_path: Path, extra: str = ""):
    return load_inventory(inventory(tmp_path, "    ship: image\n    sudo: true\n" + extra)).target("d1")


def shipped(tmp_path: Path, image_id: str = IMAGE_A, content: bytes = b"zstd archive") -> ShippedImage:
    tarball = tmp_path / f"{image_id[7:15]}.tar.zst"
    tarball.write_bytes(content)
    from edgefleet.digest import sha256_file
    return ShippedImage("edgefleet/runtime:t", "arm64", image_id, tarball, sha256_file(tarball), len(content), 10**8)


def image_release(tmp_path: Path, target, image_id: str = IMAGE_A):
    return make_release(target.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(target), None,
                        image=shipped(tmp_path, image_id))


def facts(**over) -> Facts:
    base = Facts(arch="arm64", python="3.9", systemd=True, current=None, committed=None, lock_owner=None,
                 free_bytes=10**10, unit_sha256=None, service_active="inactive", user_exists=False,
                 envs=frozenset(), releases=frozenset(), objects=frozenset(), docker="yes", zstd=True)
    return dataclasses.replace(base, **over)


@pytest.mark.parametrize("value, ok", [("venv", True), ("image", True), ("docker", False), ("true", False)])
def test_ship_setting_is_validated_naming_file_line_and_key(tmp_path, value, ok):
    inv = inventory(tmp_path, f"    ship: {value}\n")
    if ok:
        assert load_inventory(inv).target("d1").settings.ship == value
        return
    with pytest.raises(InventoryError) as err:
        load_inventory(inv)
    assert re.search(r"inv\.yaml:5: devices\.d1\.ship: .*'venv' or 'image'", str(err.value)), str(err.value)


def test_ship_defaults_to_venv_and_groups_may_set_it(tmp_path):
    assert load_inventory(REPO / "targets").target("pi5-01").settings.ship == "venv"
    (tmp_path / "inv.yaml").write_text("groups:\n  orins:\n    vars: {ship: image}\n"
                                       "devices:\n  d1: {board: orin-nano, host: h, groups: [orins]}\n")
    assert load_inventory(tmp_path).target("d1").settings.ship == "image"


@pytest.mark.parametrize("nice, limit", [(0, None), (-5, "25:25"), (-10, "30:30")])
def test_image_unit_runs_the_container_with_least_privilege(tmp_path, nice, limit):
    target = image_target(tmp_path, f"    runtime: {{nice: {nice}}}\n")
    unit = next(f for f in render_target(target) if f.name == UNIT_NAME)
    start = re.search(r"^ExecStart=(.*?)(?=^\S)", unit.text, re.M | re.S).group(1).replace("\\\n", " ")
    argv = start.split()
    for flag in ("--network host", "--read-only", "--user 10001:10001", "--cap-drop ALL",
                 "--security-opt no-new-privileges", "--name edgefleet-runtime", "--init", "--rm"):
        assert flag in " ".join(argv), flag
    assert "--cap-add" not in argv  # no capability at all: a negative nice comes from RLIMIT_NICE
    ulimits = [argv[i + 1] for i, a in enumerate(argv) if a == "--ulimit"]
    assert ulimits == ([f"nice={limit}"] if limit else [])
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert len(mounts) == 2 and all(m.endswith(",readonly") for m in mounts)
    assert {m.split(",")[1].split("/")[-1] for m in mounts} == {"bundle", "runtime.yaml"}
    assert "EnvironmentFile=/opt/edgefleet/current/image.env" in unit.text
    assert "ExecStop=/usr/bin/docker stop --time 15 edgefleet-runtime" in unit.text
    assert check_rendered(render_target(target)) in ([], ["edgefleet-tuning.sh: shellcheck not installed, only sh -n checked"])
    exposure = security_exposure(unit)
    assert exposure is None or exposure <= MAX_EXPOSURE


def test_image_release_has_the_image_and_no_payload(tmp_path):
    target = image_target(tmp_path)
    a = image_release(tmp_path, target)
    assert not any(f.path.startswith("payload/") for f in a.files) and a.env is None
    manifest = json.loads(a.manifest.read())
    assert manifest["image"] == {"id": IMAGE_A, "sha256": a.image.sha256, "arch": "arm64"} and "env" not in manifest
    assert a.image.sha256 in a.objects()
    b = image_release(tmp_path / "2", target, IMAGE_B)
    assert a.release_id != b.release_id  # the image is part of the content
    with pytest.raises(ReleaseError, match="not both"):
        make_release(target.name, fake_bundle(tmp_path / "c"), REPO / "payload", render_target(target),
                     fake_env(tmp_path), image=shipped(tmp_path))


def test_plan_first_image_deploy_uploads_and_loads(tmp_path):
    target = image_target(tmp_path)
    release = image_release(tmp_path, target)
    plan = make_plan(target, release, facts())  # python 3.9 on the device: irrelevant to an image
    assert plan.load_image == IMAGE_A and release.image.sha256 in {f.sha256 for f in plan.upload}
    assert not plan.install_env and not plan.create_user and plan.activate and plan.restart and plan.gate
    assert any("load the runtime image" in line for line in plan.describe())


def test_plan_image_already_loaded_uploads_no_tarball_and_noop_does_nothing(tmp_path):
    target = image_target(tmp_path)
    release = image_release(tmp_path, target)
    others = {sha for sha in release.objects() if sha != release.image.sha256}
    plan = make_plan(target, release, facts(images=frozenset({IMAGE_A}), objects=frozenset(others)))
    assert plan.upload == () and plan.load_image is None
    done = facts(images=frozenset({IMAGE_A}), objects=frozenset(others), current=release.release_id,
                 committed=release.release_id, releases=frozenset({release.release_id}),
                 unit_sha256=release.unit.sha256, service_active="active",
                 tuning_unit_sha256=release.tuning[0].sha256, tuning_script_sha256=release.tuning[1].sha256)
    assert make_plan(target, release, done).nothing_to_do


@pytest.mark.parametrize("docker, says", [
    ("missing", "no docker command"),
    ("permission denied while trying to connect to the Docker daemon socket", "docker failed: permission denied"),
    ("not asked", "docker failed"),
])
def test_preflight_refuses_an_image_target_without_usable_docker(tmp_path, docker, says):
    target = image_target(tmp_path)
    with pytest.raises(PlanError) as err:
        make_plan(target, image_release(tmp_path, target), facts(docker=docker))
    assert says in str(err.value) and "ship: image" in str(err.value) and "inv.yaml" in str(err.value)


def test_preflight_refuses_to_load_without_zstd_but_a_loaded_image_needs_none(tmp_path):
    target = image_target(tmp_path)
    release = image_release(tmp_path, target)
    with pytest.raises(PlanError, match="no zstd"):
        make_plan(target, release, facts(zstd=False))
    assert make_plan(target, release, facts(zstd=False, images=frozenset({IMAGE_A}))).load_image is None


def test_facts_command_asks_docker_only_for_image_targets(tmp_path):
    venv = load_inventory(inventory(tmp_path / "v", "")).target("d1")
    assert "docker" not in facts_command(venv)
    target = image_target(tmp_path)
    settings = target.settings.model_copy(update={"root": str(tmp_path / "root"), "sudo": False})
    script = facts_command(dataclasses.replace(target, settings=settings))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(f"#!/bin/sh\necho {IMAGE_A}\necho {IMAGE_B}\necho {IMAGE_A}\n")
    (fake / "docker").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    got = parse_facts(subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env).stdout)
    assert got.docker == "yes" and got.images == {IMAGE_A, IMAGE_B} and got.zstd == bool(shutil.which("zstd"))
    (fake / "docker").write_text("#!/bin/sh\necho 'Got permission denied while trying to connect' >&2\nexit 1\n")
    got = parse_facts(subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env).stdout)
    assert got.docker.startswith("Got permission denied") and got.images == frozenset()


@pytest.mark.parametrize("kept, gone, expected", [
    (["r-new", "r-old"], ["r-older"], ["sha256:" + "c" * 64]),  # only the image no kept release runs
    (["r-new", "r-old"], ["r-same"], []),  # a gone release whose image a kept one still runs
    (["r-new", "r-old"], ["r-venv"], []),  # a venv release ran no image
    (["r-new"], ["r-old", "r-older"], [IMAGE_B, "sha256:" + "c" * 64]),
])
def test_prune_removes_only_images_of_gone_releases(kept, gone, expected):
    def m(image_id):
        return ("m", {"image": {"id": image_id, "sha256": image_id[7:] + "0"}} if image_id else {"env": {}})
    manifests = {"r-new": m(IMAGE_A), "r-old": m(IMAGE_B), "r-older": m("sha256:" + "c" * 64),
                 "r-same": m(IMAGE_A), "r-venv": m(None)}
    assert unused_images(manifests, kept, gone) == expected
    # a kept release's image tarball (while it waits to be loaded) is not an unreferenced object
    objects, _ = unreferenced(manifests, kept, {"a" * 64 + "0", "f" * 64}, set())
    assert objects == ["f" * 64]


def test_vm_docker_variant_sudoers_and_inventory():
    plain, docker = vmplan.sudoers_text(), vmplan.sudoers_text(docker=True)
    assert "docker" not in plain
    for command in vmplan.docker_commands():
        assert command in docker
    assert not any(" run" in c or "exec" in c for c in vmplan.docker_commands())  # no container from sudo
    assert vmplan.recipe_text() != vmplan.recipe_text(docker=True)
    files = vmplan.provision_files(b"k", "ssh-ed25519 AAAA", "ssh-ed25519 BBBB", docker=True)
    assert json.loads(files["etc/docker/daemon.json"][0]) == {"bridge": "none", "iptables": False, "ip-masq": False}
    text = vmplan.inventory_yaml(2193, Path("/k"), Path("/kh"), docker=True)
    assert "lab-vm-docker:" in text and "ship: image" in text


class ScriptedDevice:
    """A device connection that records each command and answers as a healthy docker device would."""

    def __init__(self, image_ids: str):
        self.commands: list[str] = []
        self.image_ids = image_ids

    def run(self, command, **_):
        from edgefleet.deploy.device import _STEP_MARK

        self.commands.append(command)
        steps = [line for line in command.splitlines() if _STEP_MARK in line]
        out = self.image_ids if "image ls" in command else ""
        err = "".join(f"{_STEP_MARK} {i} 0\n" for i in range(len(steps)))
        return type("Result", (), {"exited": 0, "stdout": out, "stderr": err})()


def test_apply_first_image_release_loads_checks_and_restarts(tmp_path, monkeypatch):
    """apply_plan end to end for an image release (no packages, no payload): what the device is asked."""
    from edgefleet.deploy import activate, device

    target = image_target(tmp_path)
    release = image_release(tmp_path, target)
    plan = make_plan(target, release, facts())
    monkeypatch.setattr(activate, "upload_objects", lambda dev, plan, log, verify_on_arrival, build: ("true", False))
    conn, lines = ScriptedDevice(IMAGE_A + "\n"), []
    activate.apply_plan(device.Device(conn, target), plan, release, lines.append)
    sent = "\n".join(conn.commands)
    assert "docker load --quiet" in sent and f"rm -f /opt/edgefleet/objects/{release.image.sha256}" in sent
    assert "sudo -n systemctl restart edgefleet-runtime.service" in sent and "envs/" not in sent
    assert any(line.startswith("  loaded image sha256:aaaaaaaaaaaa") for line in lines)
    assert any(f"built releases/{release.release_id}" in line for line in lines)
    # an image that does not come up under the release's ID activates nothing
    conn = ScriptedDevice(IMAGE_B + "\n")
    with pytest.raises(device.DeployError, match=r"did not load as sha256:a+ \(docker said: exit 0\); nothing was activated"):
        activate.apply_plan(device.Device(conn, target), plan, release, lines.append)
    assert not any("restart" in c or "current.new" in c for c in conn.commands)
