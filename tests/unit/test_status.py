"""Status and drift: parse device facts, then compare with the inventory and rendered files."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from edgefleet.digest import sha256_bytes
from edgefleet.inventory import load_inventory
from edgefleet.render import UNIT_NAME, render_target
from edgefleet.status import (
    DeviceState,
    find_drift,
    parse_status,
    read_files_command,
    status_command,
    throttling,
    unified_diffs,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target():
    return load_inventory(REPO / "targets").target("pi5-01")


@pytest.fixture(scope="module")
def files(target):
    return render_target(target)


def healthy_state(files, **over) -> DeviceState:
    base = DeviceState(arch="arm64", current="r-aaaaaaaaaaaa", committed="r-aaaaaaaaaaaa", service_active="active",
                       service_enabled="enabled", tuning_active="active",
                       file_sha256={f.device_path: sha256_bytes(f.text.encode()) for f in files},
                       governors={"policy0": "performance"}, temperatures={})
    return dataclasses.replace(base, **over)


def test_parse_status():
    out = ("arch=aarch64\ncurrent=releases/r-0123456789ab\ncommitted=r-0123456789ab\nactive=active\n"
           "enabled=disabled\ntuning=inactive\nsha:/etc/x=abc\nsha:/etc/y=\n"
           "governor:policy0=performance\ngovernor:policy4=schedutil\n"
           "temp:thermal_zone0=cpu-thermal=61250\ntemp:thermal_zone1=gpu=oops\n")
    st = parse_status(out)
    assert (st.arch, st.current, st.committed, st.service_enabled) == ("arm64", "r-0123456789ab", "r-0123456789ab", "disabled")
    assert st.file_sha256 == {"/etc/x": "abc", "/etc/y": None}
    assert st.governors == {"policy0": "performance", "policy4": "schedutil"}
    assert st.temperatures["thermal_zone0"] == {"type": "cpu-thermal", "celsius": 61.25}
    assert st.temperatures["thermal_zone1"]["celsius"] is None


def test_status_command_runs_in_sh(tmp_path, target, files):
    settings = target.settings.model_copy(update={"root": str(tmp_path)})
    out = subprocess.run(["sh", "-c", status_command(dataclasses.replace(target, settings=settings), files)],
                         capture_output=True, text=True, check=True).stdout
    st = parse_status(out)
    assert st.current is None and st.arch in ("amd64", "arm64")
    assert set(st.file_sha256) == {f.device_path for f in files}


@pytest.mark.parametrize("change, expected", [
    ({}, []),
    ({"service_enabled": "disabled"}, [f"{UNIT_NAME} is disabled, not enabled"]),
    ({"service_active": "failed"}, [f"{UNIT_NAME} is failed, not active"]),
    ({"tuning_active": "failed"}, ["edgefleet-tuning.service is failed: governor and power mode not applied"]),
    ({"governors": {"policy0": "powersave"}}, ["cpufreq policy0 governor is powersave, expected performance"]),
    ({"committed": "r-bbbbbbbbbbbb"}, ["current release r-aaaaaaaaaaaa never passed a health gate (committed: r-bbbbbbbbbbbb)"]),
    ({"arch": "amd64"}, ["arch is amd64, inventory says arm64"]),
    ({"current": None}, ["nothing deployed (no current release)"]),
])
def test_drift(target, files, change, expected):
    assert find_drift(target, files, healthy_state(files, **change)) == expected


def test_drift_names_changed_and_missing_files(target, files):
    shas = {f.device_path: sha256_bytes(f.text.encode()) for f in files}
    first, second = files[0].device_path, files[1].device_path
    shas[first], shas[second] = "0" * 64, None
    drift = find_drift(target, files, healthy_state(files, file_sha256=shas))
    assert drift == [f"{first} differs from the rendered file (render --target pi5-01 --diff)", f"{second} is missing"]


@pytest.mark.parametrize("temps, expected", [
    ({}, "no thermal zones"),
    ({"thermal_zone0": {"type": "cpu", "celsius": 50.0}}, "ok (50.0 C)"),
    ({"thermal_zone0": {"type": "cpu", "celsius": 75.0}}, "soft (75.0 C)"),  # pi5: soft 70, hard 80
    ({"thermal_zone0": {"type": "cpu", "celsius": 50.0}, "thermal_zone1": {"type": "gpu", "celsius": 90.0}}, "hard (90.0 C)"),
])
def test_throttling(target, temps, expected):
    t = dataclasses.replace(target, settings=target.settings.model_copy(
        update={"thermal": target.settings.thermal.model_copy(update={"zones": []})}))
    assert throttling(t, temps) == expected


def test_diff_from_device_files(tmp_path, files):
    moved = [dataclasses.replace(f, device_path=str(tmp_path / f.name)) for f in files]
    (tmp_path / moved[0].name).write_text(moved[0].text)  # same
    (tmp_path / moved[1].name).write_text(moved[1].text.replace("Restart=", "Restart=no\n#", 1))  # edited
    out = subprocess.run(["sh", "-c", read_files_command(moved)], capture_output=True, text=True, check=True).stdout
    diffs = unified_diffs(moved, out)
    assert len(diffs) == len(moved) - 1  # the unchanged file has no diff; missing ones diff from empty
    assert f"--- device:{moved[1].device_path}" in diffs[0] and "+Restart=" in diffs[0]


def test_throttling_watches_only_the_named_zones(target):
    assert target.settings.thermal.zones == ["cpu-thermal"]
    temps = {"thermal_zone0": {"type": "cpu-thermal", "celsius": 55.0}, "thermal_zone1": {"type": "gpu", "celsius": 95.0}}
    assert throttling(target, temps) == "ok (55.0 C)"
