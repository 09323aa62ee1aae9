"""Converge: a device root laid out here as a deploy lays it out, edited as people edit devices,
then the facts, the plan and the repair (run locally through invoke's Context, no SSH)."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from invoke import Context

from edgefleet.deploy.activate import _build_spec, switch_current
from edgefleet.deploy.device import Device
from edgefleet.deploy.facts import ask_facts
from edgefleet.deploy.plan import make_plan
from edgefleet.deploy.release import make_release
from edgefleet.deploy.remote.build import build
from edgefleet.deploy.remote.receiver import receive
from edgefleet.deploy.transfer import layout_command
from edgefleet.digest import sha256_file
from edgefleet.inventory import load_inventory
from edgefleet.render import render_target
from tests.unit.test_deploy_plan import fake_bundle, fake_env

REPO = Path(__file__).resolve().parents[2]
PAYLOAD_FILE = "payload/edge_runtime/__init__.py"


@pytest.fixture
def device(tmp_path):
    """(device, release): release deployed into tmp_path/opt/edgefleet as a deploy would leave it."""
    target = load_inventory(REPO / "targets").target("pi5-01")
    settings = target.settings.model_copy(update={"root": str(tmp_path / "opt" / "edgefleet"), "sudo": False})
    target = dataclasses.replace(target, settings=settings)
    release = make_release(target.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(target),
                           fake_env(tmp_path))
    dev = Device(Context(), target, owns_root=True)
    dev.run(layout_command(dev), "layout")
    send(dev, release, list(release.objects()))
    spec = {**_build_spec(dev, release), "compile": False}
    build(spec)
    switch_current(dev, release.release_id)
    return dev, release


def send(dev, release, shas):
    """Upload objects as the receiver takes them (verified as written), then move them in."""
    stream = io.BytesIO()
    objects = release.objects()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for sha in shas:
            data = objects[sha].read()
            info = tarfile.TarInfo(sha)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream.seek(0)
    incoming = Path(dev.path("objects", ".in"))
    incoming.mkdir()
    got, bad = receive(stream, str(incoming))
    assert not bad
    for name in got:
        os.replace(incoming / name, Path(dev.path("objects", name)))
    incoming.rmdir()


def plan_now(dev, release, corrupt=frozenset()):
    """The plan a deploy of `release` makes now (the device's own facts for its files and objects)."""
    found = ask_facts(dev)
    s = dev.target.settings
    facts = dataclasses.replace(
        found, arch=s.arch, python=s.python, systemd=True, committed=found.current, service_active="active",
        unit_sha256=release.unit.sha256, user_exists=True, envs=frozenset({release.packages.sha256}), governors=(),
        tuning_unit_sha256=release.tuning[0].sha256 if release.tuning else None,
        tuning_script_sha256=release.tuning[1].sha256 if release.tuning else None)
    return facts, make_plan(dev.target, release, facts, corrupt) if corrupt else make_plan(dev.target, release, facts)


def edit(dev, how: str, path: str) -> None:
    file = dev.path("current", path)
    command = {"append": f"echo '# tweak' >> {file}", "sed": f"sed -i 's/^/ /' {file}"}[how]
    subprocess.run(["sh", "-c", command], check=True)


def objects_intact(dev) -> bool:
    objects = Path(dev.path("objects"))
    return all(sha256_file(f) == f.name for f in objects.iterdir() if not f.name.startswith("."))


def test_untouched_device_is_a_no_op(device):
    dev, release = device
    facts, plan = plan_now(dev, release)
    assert plan.nothing_to_do, plan.describe()


@pytest.mark.parametrize("how", ["append", "sed"])
def test_edited_config_is_repaired_and_no_object_changes(device, how):
    """`echo >> current/runtime.yaml` or `sed -i` on it: the objects stay intact, and the plan puts it back."""
    dev, release = device
    edit(dev, how, "runtime.yaml")
    assert objects_intact(dev), "an edit of runtime.yaml changed an object"
    facts, plan = plan_now(dev, release)
    assert not plan.nothing_to_do, "deploy would say nothing to do on an edited device"
    assert "  repair: runtime.yaml edited on the device" in plan.describe()
    assert plan.restart and plan.gate and not plan.upload


@pytest.mark.parametrize("how", ["append", "sed"])
def test_edited_linked_file_is_repaired_and_a_corrupt_object_sent_again(device, how):
    """An in-place write through a release's hard link corrupts its object: found, sent again, relinked."""
    from edgefleet.deploy.converge import repair_command, verify_objects

    dev, release = device
    sha = next(f.sha256 for f in release.files if f.path == PAYLOAD_FILE)
    edit(dev, how, PAYLOAD_FILE)
    facts, _ = plan_now(dev, release)
    corrupt = verify_objects(dev, sorted(facts.drift.suspect_objects))
    assert corrupt == ({sha} if how == "append" else set())
    facts, plan = plan_now(dev, release, frozenset(corrupt))
    assert f"  repair: {PAYLOAD_FILE} edited on the device" in plan.describe()
    assert [f.sha256 for f in plan.upload] == sorted(corrupt)
    # carry the plan out: the corrupt object again, then the repair; the next deploy has nothing to do
    send(dev, release, [f.sha256 for f in plan.upload])
    subprocess.run(["sh", "-c", repair_command(dev, [(p, s) for p, s, _ in plan.repair])], check=True)
    assert objects_intact(dev)
    facts, plan = plan_now(dev, release)
    assert plan.nothing_to_do, plan.describe()


def test_objects_are_read_only(device):
    dev, _ = device
    modes = {Path(f).stat().st_mode & 0o777 for f in Path(dev.path("objects")).iterdir() if f.name[0] != "."}
    assert modes == {0o444}


@pytest.mark.parametrize("how", ["append", "sed"])
def test_status_reports_what_deploy_repairs(device, how):
    """`status` names each file the plan repairs, in the same words; after the repair it names none."""
    from edgefleet.deploy.converge import repair_command
    from edgefleet.status import find_drift, parse_status, status_command

    dev, release = device
    edit(dev, how, "runtime.yaml")
    edit(dev, "sed", PAYLOAD_FILE)
    files = render_target(dev.target)
    out = subprocess.run(["sh", "-c", status_command(dev.target, files)], capture_output=True, text=True).stdout
    drift = find_drift(dev.target, files, parse_status(out))
    _, plan = plan_now(dev, release)
    repairs = [line.removeprefix("  repair: ") for line in plan.describe() if line.startswith("  repair: ")]
    assert repairs == [f"{PAYLOAD_FILE} edited on the device", "runtime.yaml edited on the device"]
    assert [d for d in drift if d.endswith("(deploy puts it back)")] == [f"{r} (deploy puts it back)" for r in repairs]
    subprocess.run(["sh", "-c", repair_command(dev, [(p, s) for p, s, _ in plan.repair])], check=True)
    out = subprocess.run(["sh", "-c", status_command(dev.target, files)], capture_output=True, text=True).stdout
    assert not [d for d in find_drift(dev.target, files, parse_status(out)) if "on the device" in d]


def test_releases_kept_on_the_device_are_listed_for_rollback_to(device):
    """`status --releases`: each release dir on the device, its bundle id, which is active, its last gate."""
    import json

    from edgefleet.inspect import parse_releases, releases_command

    dev, release = device
    Path(dev.path("state.json")).write_text(json.dumps({"current": release.release_id, "history": [
        {"time": "2026-12-07T10:00:00Z", "release": release.release_id, "healthy": True}]}, indent=2))
    out = subprocess.run(["sh", "-c", releases_command(dev.root)], capture_output=True, text=True).stdout
    assert parse_releases(out) == [{"release": release.release_id, "bundle_id": release.bundle_id, "active": True,
                                    "deployed": "2026-12-07T10:00:00Z", "healthy": True}]


def test_status_names_the_bundle_the_device_runs(device):
    from edgefleet.status import parse_status, status_command

    dev, release = device
    files = render_target(dev.target)
    out = subprocess.run(["sh", "-c", status_command(dev.target, files)], capture_output=True, text=True).stdout
    assert parse_status(out).bundle_id == release.bundle_id and len(release.bundle_id) == 12


# -- rollback: a kept release is checked file by file before anything switches to it --------------

def kept_release_check(dev, release_id):
    """What a rollback to `release_id` does before the switch: (log lines, error or "")."""
    from edgefleet.deploy.device import DeployError
    from edgefleet.deploy.rollback import _converge_kept_release

    lines: list[str] = []
    try:
        _converge_kept_release(dev, ask_facts(dev), release_id, lines.append)
    except DeployError as exc:
        return lines, str(exc)
    return lines, ""


def test_rollback_check_of_an_untouched_release_changes_nothing(device):
    dev, release = device
    assert kept_release_check(dev, release.release_id) == ([], "")


def test_rollback_puts_back_an_edited_and_a_missing_file_of_the_release_it_goes_to(device):
    dev, release = device
    rel = Path(dev.path("releases", release.release_id))
    subprocess.run(["sh", "-c", f"sed -i 's/^/ /' {rel}/runtime.yaml && rm {rel}/{PAYLOAD_FILE}"], check=True)
    lines, error = kept_release_check(dev, release.release_id)
    assert not error
    assert "  repair: runtime.yaml edited on the device" in lines, lines
    assert f"  repair: {PAYLOAD_FILE} missing on the device" in lines, lines
    by_path = {f.path: f.sha256 for f in release.files}
    assert sha256_file(rel / "runtime.yaml") == by_path["runtime.yaml"]
    assert (rel / PAYLOAD_FILE).samefile(dev.path("objects", by_path[PAYLOAD_FILE]))
    assert kept_release_check(dev, release.release_id) == ([], "")  # and the marks are back: clean again


@pytest.mark.parametrize("corrupt", ["runtime.yaml", PAYLOAD_FILE])
def test_rollback_refuses_a_release_whose_object_is_corrupt_naming_the_file(device, corrupt):
    """The file edited and its object no longer its sha256: nothing on the device can put it back."""
    dev, release = device
    rel = Path(dev.path("releases", release.release_id))
    sha = next(f.sha256 for f in release.files if f.path == corrupt)
    subprocess.run(["sh", "-c", f"echo '# tweak' >> {rel}/{corrupt} && echo x >> {dev.path('objects', sha)}"],
                   check=True)
    lines, error = kept_release_check(dev, release.release_id)
    assert f"cannot roll back to {release.release_id}: {corrupt} edited on the device, and its object " \
           f"{sha[:12]} no longer matches its sha256" in error, error
    assert not any(line.strip().startswith("repair:") for line in lines), lines


def test_kept_release_repairs_from_a_table():
    from edgefleet.deploy.converge import ReleaseDrift, kept_release_repairs

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    drift = ReleaseDrift(files=(("manifest.json", "edited", ""), ("p/x.py", "missing", a),
                                ("p/y.py", "unlinked", b), ("runtime.yaml", "edited", c)))
    repairs, refusals = kept_release_repairs(drift, {b}, frozenset({a, b}))
    assert repairs == [("p/x.py", a)]
    assert refusals == ["manifest.json edited on the device (the list of the release's files cannot be trusted)",
                        f"p/y.py replaced on the device (no longer the release's own file), and its object "
                        f"{b[:12]} no longer matches its sha256",
                        f"runtime.yaml edited on the device, and its object {c[:12]} is not on the device"]


def second_release(dev, tmp_path):
    """Another release (runtime.log_level changed) built beside the first and made active."""
    t = dev.target
    runtime = t.settings.runtime.model_copy(update={"log_level": "warning"})
    other = dataclasses.replace(t, settings=t.settings.model_copy(update={"runtime": runtime}))
    release = make_release(t.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(other),
                           fake_env(tmp_path))
    send(dev, release, [sha for sha in release.objects() if not Path(dev.path("objects", sha)).exists()])
    build({**_build_spec(dev, release), "compile": False})
    switch_current(dev, release.release_id)
    return release


def test_a_deploy_back_to_a_kept_release_repairs_it_before_the_switch(device, tmp_path):
    """Deploying a release the device still keeps (after a rollback, say) checks that release too:
    its edited copy put back, its corrupt object sent again, its missing file linked again."""
    from edgefleet.deploy.converge import repair_command, verify_objects
    from edgefleet.deploy.facts import ask_kept_release

    dev, first = device
    second_release(dev, tmp_path)
    kept = dev.path("releases", first.release_id)
    sha = next(f.sha256 for f in first.files if f.path == "runtime.yaml")
    subprocess.run(["sh", "-c", f"sed -i 's/^/ /' {kept}/runtime.yaml && echo x >> {dev.path('objects', sha)} && "
                                f"rm {kept}/{PAYLOAD_FILE}"], check=True)
    facts, _ = plan_now(dev, first)
    corrupt = frozenset(verify_objects(dev, sorted(facts.drift.suspect_objects)))
    assert corrupt == {sha}
    plan = make_plan(dev.target, first, facts, corrupt, kept_drift=ask_kept_release(dev, first.release_id))
    lines = plan.describe()
    assert "  repair: runtime.yaml edited on the device" in lines, lines
    assert f"  repair: {PAYLOAD_FILE} missing on the device" in lines, lines
    assert [f.sha256 for f in plan.upload] == [sha] and plan.activate
    send(dev, first, [f.sha256 for f in plan.upload])
    subprocess.run(["sh", "-c", repair_command(dev, [(p, s) for p, s, _ in plan.repair], kept)], check=True)
    assert objects_intact(dev)
    assert ask_kept_release(dev, first.release_id).files == ()
