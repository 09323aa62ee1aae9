"""Pure parts of the lab: ports, names, known_hosts lines, sshd drop-in, inventory YAML."""

from pathlib import Path

import pytest
import yaml

from edgefleet.lab import plan

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrMddYStF7dvf1fKUSDfaOWjMvqvs+U0ZmKQUFPdfDu"


@pytest.mark.parametrize("index, name, container, ssh_port, runtime_port", [
    (1, "lab-01", "edgefleet-lab-01", 2201, 18081),
    (9, "lab-09", "edgefleet-lab-09", 2209, 18089),
    (10, "lab-10", "edgefleet-lab-10", 2210, 18090),
    (99, "lab-99", "edgefleet-lab-99", 2299, 18179),
])
def test_device_names_and_ports(monkeypatch, index, name, container, ssh_port, runtime_port):
    monkeypatch.delenv(plan.SLOT_ENV, raising=False)
    device = plan.LabDevice(index, "arm64")
    assert (device.name, device.container, device.ssh_port, device.runtime_port) == (
        name, container, ssh_port, runtime_port)


@pytest.mark.parametrize("value, container, ssh_port, runtime_port, selector", [
    ("", "edgefleet-lab-03", 2203, 18083, "edgefleet.lab=0"),
    ("0", "edgefleet-lab-03", 2203, 18083, "edgefleet.lab=0"),
    ("4", "edgefleet-lab4-03", 2603, 18483, "edgefleet.lab=4"),
])
def test_slot_moves_names_and_ports(monkeypatch, value, container, ssh_port, runtime_port, selector):
    monkeypatch.setenv(plan.SLOT_ENV, value)
    device = plan.LabDevice(3, "amd64")
    assert (device.container, device.ssh_port, device.runtime_port, plan.selector()) == (
        container, ssh_port, runtime_port, selector)


@pytest.mark.parametrize("value, state", [("", "lab"), ("0", "lab"), ("4", "lab/slot-4")])
def test_slot_keeps_its_own_keys_and_state(monkeypatch, tmp_path, value, state):
    """Labs in two slots never share a client key, known_hosts or fake sysfs (one's down removed the other's)."""
    from edgefleet.lab import LabPaths

    monkeypatch.setenv(plan.SLOT_ENV, value)
    paths = LabPaths(build_dir=tmp_path, targets_dir=tmp_path / "t")
    assert paths.state == tmp_path / state and paths.client_key.parent == paths.known_hosts.parent == paths.state


@pytest.mark.parametrize("value", ["10", "-1", "x"])
def test_slot_rejects(monkeypatch, value):
    monkeypatch.setenv(plan.SLOT_ENV, value)
    with pytest.raises(ValueError, match="EDGEFLEET_LAB_SLOT: expected 0..9"):
        plan.slot()


@pytest.mark.parametrize("count, arch, error", [
    (0, "arm64", "devices: expected 1..99, got 0"),
    (100, "amd64", "devices: expected 1..99, got 100"),
    (1, "riscv64", "arch: expected one of arm64, amd64, got 'riscv64'"),
])
def test_plan_rejects(count, arch, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        plan.plan_devices(count, arch)


def test_plan_ports_are_unique():
    devices = plan.plan_devices(plan.MAX_DEVICES, "amd64")
    ports = [d.ssh_port for d in devices] + [d.runtime_port for d in devices]
    assert len(set(ports)) == len(ports)
    assert [d.name for d in devices[:2]] == ["lab-01", "lab-02"]


@pytest.mark.parametrize("port, key, expected", [
    (2201, KEY, "[127.0.0.1]:2201 " + KEY),
    (2201, KEY + " root@lab-01", "[127.0.0.1]:2201 " + KEY),
    (22, KEY, "127.0.0.1 " + KEY),
])
def test_known_hosts_line(port, key, expected):
    assert plan.known_hosts_line(port, key) == expected


@pytest.mark.parametrize("bad", ["", "AAAA", "not-a-key AAAA"])
def test_known_hosts_line_rejects(bad):
    with pytest.raises(ValueError):
        plan.known_hosts_line(2201, bad)


def test_sshd_config_listens_on_one_loopback_port():
    text = plan.sshd_config(2203)
    assert "ListenAddress 127.0.0.1:2203\n" in text
    assert "HostKey /etc/ssh/ssh_host_ed25519_key\n" in text


BOARD_SETTINGS = {
    "pi5": {"arch": "arm64", "python": "3.11", "sudo": True, "health": {"latency_budget_ms": 40}},
    "orin-nano": {"arch": "arm64", "python": "3.10", "sudo": True},
    "rk3588": {"arch": "arm64", "python": "3.11", "sudo": True},
    "qemu-virt": {"arch": "arm64", "python": "3.11", "emulated": True, "health": {"ready_timeout_s": 300}},
}


@pytest.mark.parametrize("count, board, boards", [
    (4, None, ["pi5", "orin-nano", "rk3588", "pi5"]),
    (2, "qemu-virt", ["qemu-virt", "qemu-virt"]),
])
def test_boards_round_robin_unless_one_is_given(count, board, boards):
    assert [d.board for d in plan.plan_devices(count, "arm64", board)] == boards


@pytest.mark.parametrize("index, arch, board, expected", [
    (1, "arm64", "pi5", {"arch": "arm64", "sudo": False, "emulated": True,
                         "health": {"ready_timeout_s": 600.0}, "runtime": {"port": 18081}}),
    (2, "arm64", "orin-nano", {"arch": "arm64", "python": "3.11", "sudo": False, "emulated": True,
                               "health": {"ready_timeout_s": 600.0}, "runtime": {"port": 18082}}),
    (3, "amd64", "rk3588", {"arch": "amd64", "sudo": False, "emulated": True, "runtime": {"port": 18083}}),
    (4, "arm64", "qemu-virt", {"arch": "arm64", "emulated": True, "health": {"ready_timeout_s": 600.0},
                               "runtime": {"port": 18084}}),
    (5, "amd64", "qemu-virt", {"arch": "amd64", "emulated": True, "runtime": {"port": 18085}}),
])
def test_device_overrides_only_what_the_lab_cannot_be(monkeypatch, index, arch, board, expected):
    monkeypatch.delenv(plan.SLOT_ENV, raising=False)
    got = plan.device_overrides(plan.LabDevice(index, arch, board), BOARD_SETTINGS[board])
    assert got == expected


def test_inventory_yaml_matches_contract(monkeypatch, tmp_path):
    monkeypatch.delenv(plan.SLOT_ENV, raising=False)
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    text = plan.inventory_yaml(plan.plan_devices(2, "arm64"), key, known, BOARD_SETTINGS)
    assert text.startswith("# written by `invoke lab.up`; removed by `invoke lab.down`\n")
    common = {"host": "127.0.0.1", "user": "root", "ssh_key": str(key), "known_hosts": str(known),
              "groups": ["lab"], "arch": "arm64", "sudo": False, "emulated": True,
              "health": {"ready_timeout_s": 600.0}}
    assert yaml.safe_load(text) == {
        "groups": {"lab": {"description": "simulated devices on this machine"}},
        "devices": {
            "lab-01": {"board": "pi5", "port": 2201, **common, "runtime": {"port": 18081}},
            "lab-02": {"board": "orin-nano", "port": 2202, **common, "python": "3.11",
                       "runtime": {"port": 18082}},
        },
    }


def test_inventory_paths_are_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    text = plan.inventory_yaml(plan.plan_devices(1, "amd64"), Path("k"), Path("kh"), BOARD_SETTINGS)
    device = yaml.safe_load(text)["devices"]["lab-01"]
    assert device["ssh_key"] == str(tmp_path / "k")
    assert device["known_hosts"] == str(tmp_path / "kh")
