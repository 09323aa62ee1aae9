"""Pure parts of the lab VM: spec checks, port, qemu argv, inventory, and the sudoers list
held against the commands a real deploy plan runs (no QEMU, no SSH)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from edgefleet.deploy.activate import apply_plan, restart_service
from edgefleet.deploy.device import Device
from edgefleet.deploy.facts import Facts
from edgefleet.deploy.plan import make_plan
from edgefleet.deploy.release import make_release
from edgefleet.device_env import DeviceEnv
from edgefleet.digest import sha256_file
from edgefleet.inventory import load_boards, load_inventory
from edgefleet.lab import plan, vmplan
from edgefleet.render import render_target

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrMddYStF7dvf1fKUSDfaOWjMvqvs+U0ZmKQUFPdfDu"


@pytest.mark.parametrize("kwargs, error", [
    ({"kernel": "64k"}, "kernel: expected one of 4k, 16k, got '64k'"),
    ({"cpus": 0}, "cpus: expected 1..8, got 0"),
    ({"memory_mb": 100}, "memory_mb: expected 512..8192, got 100"),
])
def test_spec_rejects(kwargs, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        vmplan.VmSpec(**kwargs)


@pytest.mark.parametrize("kernel, package", [("4k", "linux-image-arm64"), ("16k", "linux-image-arm64-16k/bookworm-backports")])
def test_kernel_packages(kernel, package):
    assert vmplan.VmSpec(kernel=kernel).kernel_package == package


@pytest.mark.parametrize("slot_value, port", [("", 2190), ("3", 2193), ("9", 2199)])
def test_ssh_port_is_per_slot_and_outside_every_container_range(monkeypatch, slot_value, port):
    monkeypatch.setenv(plan.SLOT_ENV, slot_value)
    assert vmplan.ssh_port() == port
    containers = {plan.SSH_PORT_BASE + 100 * s + i for s in range(plan.SLOTS) for i in range(1, plan.MAX_DEVICES + 1)}
    assert port not in containers


def test_qemu_argv_loopback_only_and_shape(tmp_path):
    argv = vmplan.qemu_argv(vmplan.VmSpec(), tmp_path / "k", tmp_path / "i", tmp_path / "o.qcow2", 2193,
                            tmp_path / "q.sock", tmp_path / "s.log", tmp_path / "pid")
    opts = dict(zip(argv[1::2], argv[2::2]))
    assert argv[0] == "qemu-system-aarch64"
    assert (opts["-M"], opts["-cpu"], opts["-smp"], opts["-m"]) == ("virt", "cortex-a76", "4", "2048")
    netdev = [a for a in argv if a.startswith("user,")][0]
    assert "restrict=on" in netdev.split(",") and "hostfwd=tcp:127.0.0.1:2193-:22" in netdev.split(",")
    assert "virtio-net-pci,netdev=net0,romfile=" in argv
    assert f"file={tmp_path / 'o.qcow2'}" in [a for a in argv if "format=qcow2" in a][0]


def test_inventory_entry_loads_beside_the_container_lab(tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    devices = plan.plan_devices(2, "arm64")
    boards = load_boards(REPO / "targets" / "boards")
    settings = {d.board: boards[d.board].settings for d in devices}
    (targets / "lab.yaml").write_text(plan.inventory_yaml(devices, tmp_path / "k", tmp_path / "kh", settings))
    (targets / vmplan.INVENTORY_FILE).write_text(vmplan.inventory_yaml(2193, tmp_path / "vk", tmp_path / "vkh"))
    inventory = load_inventory(targets)
    vm = inventory.target("lab-vm")
    assert (vm.host, vm.port, vm.user, vm.settings.sudo, vm.settings.arch, vm.board.name) == (
        "127.0.0.1", 2193, "deploy", True, "arm64", "qemu-virt")
    assert vm.settings.emulated and vm.settings.service_user == vmplan.SERVICE_USER
    assert vm.settings.root == vmplan.DEVICE_ROOT
    assert {"lab-01", "lab-02", "lab-vm"} <= set(inventory.targets)


def test_provision_files_modes_and_sshd():
    files = vmplan.provision_files(b"PRIVATE", KEY, KEY + " client")
    assert files["etc/ssh/ssh_host_ed25519_key"] == (b"PRIVATE", 0o600)
    assert files["etc/sudoers.d/edgefleet-deploy"][1] == 0o440
    assert files["home/deploy/.ssh/authorized_keys"] == ((KEY + " client\n").encode(), 0o600)
    sshd = files["etc/ssh/sshd_config.d/10-edgefleet-vm.conf"][0].decode()
    assert "PermitRootLogin no" in sshd and "AllowUsers deploy" in sshd and "PasswordAuthentication no" in sshd


# -- the sudoers list against what deploy really runs ------------------------------------------

PATHS = {"install": "/usr/bin/install", "systemctl": "/usr/bin/systemctl", "useradd": "/usr/sbin/useradd"}


def sudoers_rules(text: str) -> list[tuple[str, str]]:
    """Return (command path, args) pairs from the Cmnd_Alias in a sudoers text."""
    body = text.split("Cmnd_Alias EDGEFLEET_DEPLOY = ", 1)[1].split("\n" + vmplan.DEPLOY_USER + " ", 1)[0]
    entries = [e.strip() for e in body.replace("\\\n", "").split(",")]
    return [tuple(e.split(" ", 1)) for e in entries]


def allowed(argv: list[str], rules) -> bool:
    """Match like sudo: exact args, or a ^...$ regex over the args joined by spaces."""
    path, args = PATHS.get(argv[0], argv[0]), " ".join(argv[1:])
    for rule_path, rule_args in rules:
        if rule_path != path:
            continue
        if rule_args.startswith("^") and rule_args.endswith("$"):
            if re.fullmatch(rule_args[1:-1], args):
                return True
        elif rule_args == args:
            return True
    return False


class RecordingConnection:
    """A Fabric-like connection that says yes to everything and keeps what it was asked."""

    capabilities = frozenset({"put"})  # a Transport that uploads through put(), as over SFTP

    user = vmplan.DEPLOY_USER

    def __init__(self):
        self.commands: list[str] = []

    def run(self, command, **_):
        self.commands.append(command)
        exited = 1 if command.startswith("id -u ") else 0  # the service user does not exist yet
        return type("Result", (), {"exited": exited, "stdout": "", "stderr": ""})()

    def put(self, *_args, **_kwargs):
        return None


@pytest.fixture
def vm_target(tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / vmplan.INVENTORY_FILE).write_text(vmplan.inventory_yaml(2193, tmp_path / "k", tmp_path / "kh"))
    return load_inventory(targets).target("lab-vm")


def test_every_root_command_of_a_first_deploy_is_in_the_sudoers_list(tmp_path, vm_target, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SSH_TRANSFER", "paramiko")  # uploads through the recording connection too
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"onnx")
    (bundle / "tokenizer.json").write_text("{}")
    (bundle / "bundle.json").write_text(json.dumps({"name": "tiny", "golden": {}}))
    tarball = tmp_path / "site.tar.gz"
    tarball.write_bytes(b"site")
    release = make_release("lab-vm", bundle, REPO / "payload", render_target(vm_target),
                           DeviceEnv("arm64", "3.11", tarball, sha256_file(tarball)))
    facts = Facts(arch="arm64", python="3.11", systemd=True, current=None, committed=None, lock_owner=None,
                  free_bytes=10**10, unit_sha256=None, service_active="inactive", user_exists=False,
                  envs=frozenset(), releases=frozenset(), objects=frozenset(), owns_root=True)
    conn = RecordingConnection()
    dev = Device(conn, vm_target, owns_root=facts.owns_root)
    apply_plan(dev, make_plan(vm_target, release, facts), release, log=lambda *_: None)
    restart_service(dev)
    # a batch (Device.batch) runs one sudo argv a line: `<argv>; rc=$?; <report rc>`
    lines = [line.split("; rc=$?")[0] for c in conn.commands for line in c.splitlines()]
    sudo = [c for c in lines if c.startswith("sudo ")]
    rules = sudoers_rules(vmplan.sudoers_text())
    assert not [c for c in sudo if " sh -c " in c], "a deploy user that owns the root needs no shell as root"
    assert len(sudo) >= 8  # useradd, 3 installs, daemon-reload, enable+restart x2
    for command in sudo:
        argv = shlex.split(command)
        assert argv[:2] == ["sudo", "-n"]
        assert allowed(argv[2:], rules), f"not in the sudoers list: {command}"


@pytest.mark.parametrize("argv", [
    ["install", "-m", "0644", "/etc/shadow", "/etc/systemd/system/edgefleet-runtime.service"],
    ["install", "-m", "0644", "/opt/edgefleet/objects/" + "a" * 64, "/etc/sudoers"],
    ["install", "-m", "0644", "/opt/edgefleet/objects/../../../etc/shadow", "/etc/systemd/system/x.service"],
    ["systemctl", "restart", "ssh.service"],
    ["sh", "-c", "id"],
    ["useradd", "--system", "-o", "-u", "0", "edgefleet"],
])
def test_sudoers_list_refuses_other_commands(argv):
    assert not allowed(argv, sudoers_rules(vmplan.sudoers_text()))


@pytest.mark.parametrize("sudo, owns_root, file_step, system_step", [
    (True, True, "mkdir -p /x", "sudo -n systemctl daemon-reload"),
    (True, False, "sudo -n sh -c 'mkdir -p /x'", "sudo -n systemctl daemon-reload"),
    (False, False, "mkdir -p /x", "systemctl daemon-reload"),
])
def test_device_privilege_kinds(vm_target, sudo, owns_root, file_step, system_step):
    target = dataclasses.replace(vm_target, settings=vm_target.settings.model_copy(update={"sudo": sudo}))
    conn = RecordingConnection()
    dev = Device(conn, target, owns_root=owns_root)
    dev.run("mkdir -p /x", "a file step")
    dev.system(["systemctl", "daemon-reload"], "a system step")
    assert conn.commands == [file_step, system_step]
