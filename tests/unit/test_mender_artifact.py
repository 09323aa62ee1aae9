"""Mender artifacts of edgefleet releases: device types, board classes, keys, the signed artifact itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgefleet.deploy.release import make_release
from edgefleet.device_env import DeviceEnv
from edgefleet.digest import sha256_file
from edgefleet.errors import InputError
from edgefleet.inventory import load_inventory
from edgefleet.mender.artifact import (
    MenderError,
    artifact_name,
    artifact_spec,
    board_classes,
    device_type,
    read_artifact,
    validate_artifact,
    write_artifact,
)
from edgefleet.mender.device.module import SPEC_NAME
from edgefleet.mender.keys import make_signing_key, public_key_path
from edgefleet.render import render_target

REPO = Path(__file__).resolve().parents[2]
needs_tool = pytest.mark.skipif(shutil.which("mender-artifact") is None,
                                reason="mender-artifact is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def inventory():
    return load_inventory(REPO / "targets")


def _bundle(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"onnx")
    (root / "tokenizer.json").write_text("{}")
    (root / "bundle.json").write_text(json.dumps({"name": "tiny-int8", "golden": {}}))
    return root


def _maker(tmp_path: Path):
    tarball = tmp_path / "site.tar.gz"
    tarball.write_bytes(b"site-packages")
    env = DeviceEnv("arm64", "3.11", tarball, sha256_file(tarball))
    bundle = _bundle(tmp_path / "bundle")
    return lambda t: make_release(t.name, bundle, REPO / "payload", render_target(t), env)


@pytest.mark.parametrize(("device", "expected"), [("pi5-01", "raspberrypi5"), ("orin-01", "jetson-orin-nano")])
def test_device_type_comes_from_the_board_profile(inventory, device, expected):
    assert device_type(inventory.target(device)) == expected


def test_device_type_defaults_to_the_board_name(inventory):
    target = inventory.target("pi5-01")
    plain = dataclasses.replace(target, settings=target.settings.model_copy(
        update={"mender": target.settings.mender.model_copy(update={"device_type": None})}))
    assert device_type(plain) == "pi5"


def test_devices_of_one_board_class_share_one_artifact(inventory, tmp_path):
    pi = inventory.target("pi5-01")
    twin = dataclasses.replace(pi, name="pi5-02", host="pi5-02.example")
    classes = board_classes([pi, twin, inventory.target("orin-01")], _maker(tmp_path))
    assert [(c.device_type, c.targets) for c in classes] == [
        ("jetson-orin-nano", ("orin-01",)), ("raspberrypi5", ("pi5-01", "pi5-02"))]
    # rendered for the class, not a device: the runtime config names the device type
    runtime = next(f for f in classes[1].release.files if f.path == "runtime.yaml")
    assert b'target: "raspberrypi5"' in runtime.read()
    assert artifact_name(classes[1]) == f"edgefleet-raspberrypi5-{classes[1].release.release_id}"


def test_ship_image_targets_are_refused_by_name(inventory, tmp_path):
    orin = inventory.target("orin-01")
    image = dataclasses.replace(orin, settings=orin.settings.model_copy(update={"ship": "image"}))
    with pytest.raises(InputError, match="orin-01: ship: image"):
        board_classes([image], _maker(tmp_path))


def test_spec_names_every_object_the_release_links(inventory, tmp_path):
    board = board_classes([inventory.target("pi5-01")], _maker(tmp_path))[0]
    spec = artifact_spec(board)
    release = board.release
    assert spec["release_id"] == release.release_id and spec["device_type"] == "raspberrypi5"
    assert {sha for sha, _ in spec["links"]} <= set(release.objects())
    assert spec["env"]["sha256"] == release.packages.sha256
    assert spec["gate"]["latency_budget_ms"] == 40 and spec["gate"]["rss_budget_mib"] == 250


def test_keygen_writes_a_private_p256_key_0600_and_refuses_to_overwrite(tmp_path):
    private, public = make_signing_key(tmp_path / "keys" / "signing.pem")
    assert public == public_key_path(private) == tmp_path / "keys" / "signing.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")  # SEC 1: what mender-artifact reads
    text = subprocess.run(["openssl", "ec", "-in", str(private), "-noout", "-text"], capture_output=True,
                          text=True).stdout
    assert "prime256v1" in text or "P-256" in text
    with pytest.raises(InputError, match="exists already"):
        make_signing_key(private)


@needs_tool
def test_artifact_is_signed_names_device_type_and_release_and_carries_the_release(inventory, tmp_path):
    private, public = make_signing_key(tmp_path / "signing.pem")
    board = board_classes([inventory.target("pi5-01")], _maker(tmp_path))[0]
    path = write_artifact(board, tmp_path / "out", private)
    assert path.name == f"edgefleet-raspberrypi5-{board.release.release_id}.mender"
    validate_artifact(path, public)
    shown = read_artifact(path, public)
    assert "signed and verified correctly" in shown
    assert "Compatible devices: '[raspberrypi5]'" in shown
    assert f"edgefleet.release: {board.release.release_id}" in shown and "Type:   edgefleet-release" in shown
    names = {line.split()[-1] for line in shown.splitlines() if line.strip().startswith("name:")}
    assert names == {*board.release.objects(), SPEC_NAME}
    other, other_public = make_signing_key(tmp_path / "other.pem")
    with pytest.raises(MenderError, match="not valid"):
        validate_artifact(path, other_public)


@needs_tool
def test_missing_signing_key_is_an_input_error_naming_the_config_key(inventory, tmp_path):
    board = board_classes([inventory.target("pi5-01")], _maker(tmp_path))[0]
    with pytest.raises(InputError, match="edgefleet.mender.signing_key"):
        write_artifact(board, tmp_path / "out", tmp_path / "none.pem")


@pytest.mark.parametrize(("current", "expected"), [
    ("", {"ArtifactVerifyKey": "/k.pem"}),
    ('{"ServerURL": "https://m.example", "ArtifactVerifyKey": "/old.pem"}',
     {"ServerURL": "https://m.example", "ArtifactVerifyKey": "/k.pem"}),
    ("not json", {"ArtifactVerifyKey": "/k.pem"}),
    ("[1, 2]", {"ArtifactVerifyKey": "/k.pem"}),
])
def test_bootstrap_sets_the_verify_key_and_keeps_the_rest_of_mender_conf(current, expected):
    from edgefleet.mender.standalone import _merged_conf

    assert json.loads(_merged_conf(current, "/k.pem")) == expected
