"""A deploy converges a real lab device (sshd, systemd) to its release: edits put back, a corrupt
object sent again, and `status` names what `deploy` repairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgefleet.deploy import deploy, rollback
from edgefleet.inspect import collect_status

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PAYLOAD_FILE = "payload/edge_runtime/__init__.py"


@pytest.fixture(scope="module")
def deployed(one_lab_device, bundle):
    first = deploy(one_lab_device, bundle, REPO / "build", log=lambda _: None)
    assert first.ok
    return one_lab_device


def objects_intact(run_on, target) -> str:
    """Return the objects whose bytes are not their name (empty: all intact)."""
    objects = f"{target.settings.root}/objects"
    return run_on(target, f"cd {objects} && for f in *; do [ \"$(sha256sum < $f | cut -d' ' -f1)\" = \"$f\" ] "
                          "|| echo $f; done")


def test_rollback_with_no_earlier_release_is_skipped(deployed):
    result = rollback(deployed, log=lambda _: None)
    assert result.ok and result.skipped and "no earlier committed release" in result.error, result


@pytest.mark.parametrize("edit", ["echo '# tweak' >> {f}", "sed -i 's/^log_level:.*/log_level: debug/' {f}"])
def test_edited_config_is_reported_then_repaired(run_on, deployed, bundle, edit):
    root = deployed.settings.root
    run_on(deployed, edit.format(f=f"{root}/current/runtime.yaml"))
    assert objects_intact(run_on, deployed) == ""  # runtime.yaml is a copy: no object changed
    drift = collect_status(deployed).drift
    assert "runtime.yaml edited on the device (deploy puts it back)" in drift, drift
    lines: list[str] = []
    repaired = deploy(deployed, bundle, REPO / "build", log=lines.append)
    assert repaired.ok and repaired.changed, lines
    assert "  repair: runtime.yaml edited on the device" in lines, lines
    assert [d for d in collect_status(deployed).drift if "on the device" in d] == []
    again: list[str] = []
    assert not deploy(deployed, bundle, REPO / "build", log=again.append).changed, again


def test_corrupted_object_is_uploaded_again(run_on, deployed, bundle):
    root = deployed.settings.root
    run_on(deployed, f"echo '# tweak' >> {root}/current/{PAYLOAD_FILE}")  # in place, through the hard link
    bad = objects_intact(run_on, deployed)
    assert bad, "the write did not reach the object: nothing to test"
    lines: list[str] = []
    repaired = deploy(deployed, bundle, REPO / "build", log=lines.append)
    assert repaired.ok, lines
    assert f"  repair: {PAYLOAD_FILE} edited on the device" in lines, lines
    assert any("no longer match their sha256" in line and bad[:12] in line for line in lines), lines
    assert any(line.startswith("  upload 1 objects") for line in lines), lines
    assert objects_intact(run_on, deployed) == ""
    assert run_on(deployed, f"[ {root}/current/{PAYLOAD_FILE} -ef {root}/objects/{bad} ] && echo linked") == "linked"


@pytest.fixture(scope="module")
def two_releases(deployed, bundle):
    """(first, second, its target): a second release (runtime.log_level changed) deployed over the first."""
    first = deploy(deployed, bundle, REPO / "build", log=lambda _: None).release_id  # on it already
    runtime = deployed.settings.runtime.model_copy(update={"log_level": "warning"})
    other = dataclasses.replace(deployed, settings=deployed.settings.model_copy(update={"runtime": runtime}))
    second = deploy(other, bundle, REPO / "build", log=lambda _: None)
    assert second.ok and second.release_id != first, second
    return first, second.release_id, other


def test_rollback_puts_back_the_edited_files_of_the_release_it_goes_to(run_on, deployed, two_releases):
    first, _, _ = two_releases
    old = f"{deployed.settings.root}/releases/{first}"
    run_on(deployed, f"sed -i 's/^log_level:.*/log_level: debug/' {old}/runtime.yaml && rm {old}/{PAYLOAD_FILE}")
    lines: list[str] = []
    result = rollback(deployed, log=lines.append)
    assert result.ok and result.active == first, (result, lines)
    assert "  repair: runtime.yaml edited on the device" in lines, lines
    assert f"  repair: {PAYLOAD_FILE} missing on the device" in lines, lines
    left = [d for d in collect_status(deployed).drift if "on the device" in d]
    assert left == [], f"the release rolled back to still differs from its manifest: {left}"


def test_rollback_refuses_a_release_whose_file_and_object_are_both_damaged(run_on, deployed, bundle, two_releases):
    """Nothing on the device holds the release's runtime.yaml any more: refused, naming it, never
    activated; deploying its bundle, as the refusal says, sends the object again and repairs it."""
    root = deployed.settings.root
    first, second, second_target = two_releases
    now = run_on(deployed, f"readlink {root}/current").rsplit("/", 1)[-1]
    to = second if now == first else first
    sha = run_on(deployed, f"python3 -c \"import json; print(json.load(open('{root}/releases/{to}/manifest.json'))"
                              f"['files']['runtime.yaml'])\"")
    run_on(deployed, f"echo '# tweak' >> {root}/releases/{to}/runtime.yaml && echo x >> {root}/objects/{sha}")
    result = rollback(deployed, to, log=lambda _: None)
    assert not result.ok and not result.skipped, result
    assert f"cannot roll back to {to}: runtime.yaml edited on the device, and its object {sha[:12]} no longer " \
           f"matches its sha256" in result.error, result.error
    assert run_on(deployed, f"readlink {root}/current").rsplit("/", 1)[-1] == now  # left where it was
    lines: list[str] = []
    redeployed = deploy(second_target if to == second else deployed, bundle, REPO / "build", log=lines.append)
    assert redeployed.ok and redeployed.release_id == to, lines
    assert "  repair: runtime.yaml edited on the device" in lines, lines
    assert objects_intact(run_on, deployed) == ""
    assert [d for d in collect_status(deployed).drift if "on the device" in d] == []
