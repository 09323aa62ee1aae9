"""The lab's fake sysfs: board layouts, the tree as the runtime reads it, the heat and governor knobs."""

from pathlib import Path

import pytest
import yaml
from edge_runtime.sysfs import Sysfs

from edgefleet.device_env import pin_requirements
from edgefleet.inventory import load_board_profiles, load_inventory
from edgefleet.lab import plan, sysfs
from edgefleet.render import render_target

REPO = Path(__file__).resolve().parents[2]
BOARDS = load_board_profiles(REPO / "targets")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_layout_matches_the_board_profile(name):
    board = BOARDS[name]
    layout = sysfs.layout_for(name, board.cores)
    assert layout.cpus == tuple(range(board.cores))  # every core in exactly one policy
    clusters = [set(c.cpus) for c in layout.clusters]
    for key in ("big_cores",):
        cores = set(board.settings.get(key) or [])
        assert cores == set().union(*[c for c in clusters if c & cores]), f"{key} splits a cluster"
    assert set(board.settings["thermal"]["zones"]) <= set(layout.zones)


def test_a_board_without_a_layout_gets_one_policy_and_one_zone():
    layout = sysfs.layout_for("my-board", 3)
    assert [c.cpus for c in layout.clusters] == [(0, 1, 2)] and layout.zones == ("cpu-thermal",)


def test_tree_reads_like_the_kernels(tmp_path):
    sysfs.write_tree(tmp_path, sysfs.LAYOUTS["rk3588"])
    policies = Sysfs(tmp_path).policies()
    assert [(p.name, p.cpus, p.governor, p.cur_khz, p.max_khz) for p in policies] == [
        ("policy0", (0, 1, 2, 3), "schedutil", 408000, 1800000),
        ("policy4", (4, 5), "schedutil", 408000, 2352000),
        ("policy6", (6, 7), "schedutil", 408000, 2352000),
    ]
    policy = tmp_path / sysfs.CPUFREQ / "policy4"
    assert (policy / "related_cpus").read_text() == "4 5\n"
    assert (policy / "scaling_available_governors").read_text().split() == list(sysfs.GOVERNORS)
    assert (policy / "scaling_governor").stat().st_mode & 0o777 == 0o644
    assert (policy / "cpuinfo_max_freq").stat().st_mode & 0o777 == 0o444
    zones = Sysfs(tmp_path).zones(["bigcore0-thermal", "thermal_zone0"])
    assert [(z.name, z.type, z.temp_c) for z in zones] == [
        ("thermal_zone0", "soc-thermal", sysfs.IDLE_C), ("thermal_zone1", "bigcore0-thermal", sysfs.IDLE_C)]


@pytest.mark.parametrize("zone, celsius, changed", [
    (None, 85.0, ["thermal_zone0", "thermal_zone1", "thermal_zone2", "thermal_zone3", "thermal_zone4"]),
    ("0", 76.5, ["thermal_zone0"]),
    ("thermal_zone4", 90.25, ["thermal_zone4"]),
    ("gpu-thermal", 60.0, ["thermal_zone1"]),
])
def test_heat_sets_zones_in_millidegrees(tmp_path, zone, celsius, changed):
    sysfs.write_tree(tmp_path, sysfs.LAYOUTS["orin-nano"])
    assert sysfs.set_temperature(tmp_path, celsius, zone) == changed
    temps = {z.name: z.temp_c for z in Sysfs(tmp_path).zones()}
    assert temps == {name: (celsius if name in changed else sysfs.IDLE_C) for name in temps}
    assert (tmp_path / sysfs.THERMAL / changed[0] / "temp").read_text() == f"{round(celsius * 1000)}\n"
    assert not [p for p in (tmp_path / sysfs.THERMAL).rglob(".*")]  # no temporary files left


@pytest.mark.parametrize("zone, celsius, error", [
    ("7", 80.0, r"zone: no thermal zone '7' \(known: 0 \(cpu-thermal\)\)"),
    (None, 151.0, "celsius: expected -40..150, got 151.0"),
])
def test_heat_rejects(tmp_path, zone, celsius, error):
    sysfs.write_tree(tmp_path, sysfs.LAYOUTS["pi5"])
    with pytest.raises(ValueError, match=error):
        sysfs.set_temperature(tmp_path, celsius, zone)


def test_heat_needs_a_tree(tmp_path):
    with pytest.raises(ValueError, match="no thermal zones"):
        sysfs.set_temperature(tmp_path, 80.0)


def test_governor_knob_accepts_only_available_governors(tmp_path):
    sysfs.write_tree(tmp_path, sysfs.LAYOUTS["orin-nano"])
    assert sysfs.set_governor(tmp_path, "powersave", "policy4") == ["policy4"]
    assert sysfs.read_governors(tmp_path) == {"policy0": "schedutil", "policy4": "powersave"}
    with pytest.raises(ValueError, match="'turbo' is not available on policy0"):
        sysfs.set_governor(tmp_path, "turbo")
    with pytest.raises(ValueError, match="no cpufreq 'policy2'"):
        sysfs.set_governor(tmp_path, "performance", "policy2")
    assert sysfs.read_governors(tmp_path) == {"policy0": "schedutil", "policy4": "powersave"}


def test_binds_put_the_tree_where_the_kernels_lives(tmp_path):
    assert sysfs.binds(tmp_path) == {
        str(tmp_path / "devices/system/cpu/cpufreq"): {"bind": "/sys/devices/system/cpu/cpufreq", "mode": "rw"},
        str(tmp_path / "class/thermal"): {"bind": "/sys/class/thermal", "mode": "rw"},
    }


@pytest.fixture
def lab_inventory(tmp_path, monkeypatch):
    """The inventory `lab.up --devices 3 --arch arm64` writes, loaded with the shipped board profiles."""
    monkeypatch.delenv(plan.SLOT_ENV, raising=False)
    targets = tmp_path / "targets"
    targets.mkdir()
    settings = {name: board.settings for name, board in BOARDS.items()}
    text = plan.inventory_yaml(plan.plan_devices(3, "arm64"), tmp_path / "key", tmp_path / "kh", settings)
    (targets / "lab.yaml").write_text(text)
    return load_inventory(targets)


def test_lab_orin_nano_runs_the_image_python_with_the_boards_pins(lab_inventory):
    """orin-nano says cp310; the lab image has 3.11: the device overrides python, nothing else of the board."""
    orin = lab_inventory.target("lab-02")
    assert orin.board.name == "orin-nano" and BOARDS["orin-nano"].settings["python"] == "3.10"
    assert (orin.settings.python, orin.settings.abi) == ("3.11", "cp311")
    assert orin.origins[("python",)].layer == "device lab-02"
    assert orin.settings.packages.pins == BOARDS["orin-nano"].settings["packages"]["pins"]
    pinned = pin_requirements((REPO / "payload" / "requirements.txt").read_text(), orin.settings.packages.pins)
    assert "onnxruntime==1.23.2  # pinned by the board profile" in pinned
    pi5 = lab_inventory.target("lab-01")
    assert pi5.settings.python == "3.11" and pi5.origins[("python",)].layer == "board pi5"  # no override


@pytest.mark.parametrize("name, board, affinity, zones, soft_hard", [
    ("lab-01", "pi5", [0, 1, 2, 3], ["cpu-thermal"], (70.0, 80.0)),
    ("lab-02", "orin-nano", [0, 1, 2, 3, 4, 5], ["cpu-thermal", "gpu-thermal", "tj-thermal"], (85.0, 95.0)),
    ("lab-03", "rk3588", [4, 5, 6, 7], ["soc-thermal", "bigcore0-thermal", "bigcore1-thermal"], (75.0, 85.0)),
])
def test_lab_devices_render_their_boards_layout(lab_inventory, name, board, affinity, zones, soft_hard):
    target = lab_inventory.target(name)
    assert target.board.name == board and not target.settings.sudo and target.settings.emulated
    config = yaml.safe_load(next(f for f in render_target(target) if f.name == "runtime.yaml").text)
    assert config["affinity"] == affinity and config["thermal"]["zones"] == zones
    assert (config["thermal"]["soft_c"], config["thermal"]["hard_c"]) == soft_hard
    assert config["governor"] == "performance" and config["port"] == plan.LabDevice(int(name[-2:]), "arm64").runtime_port
