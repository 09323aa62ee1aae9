"""Real lab devices: containers with systemd and sshd, reached with paramiko (strict keys).

Each test owns the lab while it runs: it refuses to start when lab containers already exist
(someone's lab is up) instead of taking it down.
"""

import paramiko
import pytest
import yaml

from edgefleet import engine, lab
from edgefleet.lab import plan
from edgefleet.paths import build_dir


@pytest.fixture
def lab_paths(tmp_path):
    if engine.containers(plan.selector()):
        pytest.fail("a lab is already up; run `invoke lab.down` before these tests")
    paths = lab.LabPaths(build_dir=build_dir(None), targets_dir=tmp_path / "targets")
    yield paths
    lab.down(paths)
    assert engine.containers(plan.selector()) == []
    assert not paths.inventory.exists()


def _run(device: dict, command: str) -> str:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(device["known_hosts"])
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(device["host"], port=device["port"], username=device["user"],
                key_filename=device["ssh_key"], allow_agent=False, look_for_keys=False,
                timeout=30)
    try:
        _, stdout, _ = ssh.exec_command(command, timeout=120)
        return stdout.read().decode().strip()
    finally:
        ssh.close()


def _bring_up(paths, arch):
    lab.up(paths, devices=1, arch=arch)
    inventory = yaml.safe_load(paths.inventory.read_text())
    return inventory["devices"]["lab-01"]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_amd64_device_runs_systemd_and_sshd(lab_paths):
    device = _bring_up(lab_paths, "amd64")
    port = plan.LabDevice(1, "amd64").ssh_port
    assert device["arch"] == "amd64" and device["port"] == port
    assert _run(device, "systemctl is-system-running") == "running"
    assert _run(device, f"ss -Hltn '( sport = :{port} )' | awk '{{print $4}}'") == f"127.0.0.1:{port}"
    again = lab.up(lab_paths, devices=1, arch="amd64")  # idempotent
    assert [d.name for d in again] == ["lab-01"]
    assert [s.state for s in lab.status(lab_paths)] == ["running"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_unknown_host_key_is_rejected(lab_paths, tmp_path):
    device = _bring_up(lab_paths, "amd64")
    device["known_hosts"] = str(tmp_path / "empty_known_hosts")
    (tmp_path / "empty_known_hosts").write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _run(device, "true")


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_arm64_device_runs_aarch64_python(lab_paths):
    device = _bring_up(lab_paths, "arm64")
    assert device["arch"] == "arm64"
    machine = "python3 -c 'import platform; print(platform.machine())'"
    assert _run(device, machine) == "aarch64"
    assert _run(device, "systemctl is-system-running") in ("running", "degraded")
