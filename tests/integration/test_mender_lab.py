"""Signed artifacts installed by the real mender-client (Debian's 3.4, standalone mode) on a lab device.

One amd64 lab device for the module: bootstrap it, then install a good release (gate passes,
the client commits), a release whose goldens fail (the client rolls back to the good one), a
tampered and an unsigned artifact (refused before anything is written), one for another
device type (refused), and read the result back with `status` over SSH.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgefleet.deploy import deploy, prepare_release
from edgefleet.inspect import collect_status
from edgefleet.mender.artifact import board_classes, write_artifact
from edgefleet.mender.device.module import SPEC_NAME
from edgefleet.mender.keys import make_signing_key
from edgefleet.mender.standalone import bootstrap, install

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("mender-artifact") is None, reason="needs mender-artifact")]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_signing_key(tmp_path_factory.mktemp("keys") / "signing.pem")


@pytest.fixture(scope="module")
def device(one_lab_device, keys):
    bootstrap(one_lab_device, keys[1], log=lambda _: None)
    return one_lab_device


@pytest.fixture(scope="module")
def good(device, bundle, keys, tmp_path_factory):
    """The tiny bundle's artifact for the lab device's board class: (board class, path)."""
    return _artifact(device, bundle, keys[0], tmp_path_factory.mktemp("good"))


def _artifact(target, bundle: Path, key: Path, out: Path):
    board = board_classes([target], lambda t: prepare_release(t, bundle, REPO / "build", log=lambda _: None))[0]
    return board, write_artifact(board, out, key)


def _tampered(signed: Path, out: Path) -> Path:
    """Return a copy of `signed` whose payload's instructions point the module elsewhere (signature kept)."""
    with tarfile.open(signed) as outer:
        members = [(m, outer.extractfile(m).read()) for m in outer.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(out, "w") as new:
        for member, data in members:
            if member.name.startswith("data/"):
                with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as inner:
                    files = [(m, inner.extractfile(m).read()) for m in inner.getmembers()]  # type: ignore[union-attr]
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as inner:
                    for m, content in files:
                        if m.name == SPEC_NAME:
                            content = content.replace(b'"/opt/edgefleet"', b'"/opt/evil000000"')
                        inner.addfile(m, io.BytesIO(content))
                data = gzip.compress(buf.getvalue())
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return out


def _tree(run_on, target) -> str:
    """What a refused artifact must not change: the device root's listing and state.json."""
    root = target.settings.root
    return run_on(target, f"ls -laR {root} 2>/dev/null | grep -v ' \\.$\\| \\.\\.$'; cat {root}/state.json")


def test_good_artifact_installs_passes_the_gate_and_commits(run_on, device, good):
    board, path = good
    result = install(device, path, log=lambda _: None)
    assert result.installed and result.committed, result.detail
    assert result.active_artifact == path.stem
    root, rid = device.settings.root, board.release.release_id
    assert run_on(device, f"readlink {root}/current") == f"releases/{rid}"
    assert run_on(device, "systemctl is-active edgefleet-runtime.service") == "active"
    state = json.loads(run_on(device, f"cat {root}/state.json"))
    assert state["current"] == rid and state["history"][-1]["healthy"] is True
    assert state["history"][-1]["via"] == "mender"
    assert run_on(device, f"test -e {root}/.lock && echo held || echo free") == "free"
    # status over SSH reads what the client did: the release, committed, healthy
    status = collect_status(device)
    assert (status.release, status.committed, status.healthy) == (rid, rid, True)


def test_release_failing_its_goldens_is_rolled_back_by_the_client(run_on, device, bundle, keys, good, tmp_path):
    good, good_path = good
    assert install(device, good_path, log=lambda _: None).ok
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["golden"]["embeddings"] = [[-v for v in row] for row in meta["golden"]["embeddings"]]
    (bad / "bundle.json").write_text(json.dumps(meta))
    board, path = _artifact(device, bad, keys[0], tmp_path / "bad-out")
    result = install(device, path, log=lambda _: None)
    assert result.installed and not result.committed and result.rolled_back, result.detail
    # the runtime's own selftest (behind /readyz) already fails on these goldens, as in a deploy
    assert f"health gate failed for {board.release.release_id}" in result.detail, result.detail
    assert "golden texts below" in result.detail
    root = device.settings.root
    assert result.active_artifact == good_path.stem  # the client's own record: back on the good one
    assert run_on(device, f"readlink {root}/current") == f"releases/{good.release.release_id}"
    assert run_on(device, "systemctl is-active edgefleet-runtime.service") == "active"
    state = json.loads(run_on(device, f"cat {root}/state.json"))
    last = state["history"][-1]
    assert state["current"] == good.release.release_id
    assert (last["release"], last["healthy"], last["active"]) == (board.release.release_id, False,
                                                                  good.release.release_id)


def test_tampered_unsigned_and_foreign_artifacts_are_refused_before_anything_is_written(
        run_on, device, bundle, keys, tmp_path):
    other = bundle.parent / "other"
    if not other.exists():
        shutil.copytree(bundle, other)
        (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text() + " ")
    board, path = _artifact(device, other, keys[0], tmp_path / "signed")
    before = _tree(run_on, device)
    tampered = _tampered(path, tmp_path / "tampered.mender")
    unsigned = tmp_path / "unsigned"
    subprocess.run(["mender-artifact", "write", "module-image", "-T", "edgefleet-release", "-n", "edgefleet-unsigned",
                    "-t", "raspberrypi5", "-o", str(unsigned), "-f", str(bundle / "bundle.json")], check=True,
                   capture_output=True)
    foreign_target = dataclasses.replace(device, settings=device.settings.model_copy(
        update={"mender": device.settings.mender.model_copy(update={"device_type": "jetson-orin-nano"})}))
    _, foreign = _artifact(foreign_target, other, keys[0], tmp_path / "foreign")
    for artifact, why in ((tampered, "checksum"), (unsigned, "expecting signed artifact"),
                          (foreign, "not compatible with device raspberrypi5")):
        result = install(device, artifact, log=lambda _: None)
        assert not result.installed, artifact.name
        assert why in result.detail, result.detail
    assert _tree(run_on, device) == before


def test_a_device_moves_between_mender_and_ssh_deploys_keeping_its_history(run_on, device, bundle, good):
    board, path = good
    assert install(device, path, log=lambda _: None).ok
    root = device.settings.root
    before = json.loads(run_on(device, f"cat {root}/state.json"))["history"]
    # an SSH deploy of the device's own (per-device) release: lock free, history kept and extended
    result = deploy(device, bundle, REPO / "build", log=lambda _: None)
    assert result.ok and result.previous == board.release.release_id
    after = json.loads(run_on(device, f"cat {root}/state.json"))
    assert after["history"][:len(before)] == before and after["current"] == result.release_id
