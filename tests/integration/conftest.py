"""Integration fixtures: a real sshd on a 127.0.0.1 port, with keys made for the test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet import lab
from edgefleet.inventory import load_inventory
from edgefleet.transport import connect

REPO = Path(__file__).resolve().parents[2]

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class LocalSSHD:
    port: int
    client_key: Path
    host_pub: str
    known_hosts: Path
    dir: Path


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sshd(d: Path, client_pub: Path):
    """Start sshd as root on 127.0.0.1:<free port> with its own host key, trusting `client_pub`."""
    d.mkdir(parents=True)
    _keygen(d / "host_ed25519")
    (d / "authorized_keys").write_text(client_pub.read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
        f"PidFile {d}/sshd.pid\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stdout.read().decode()}")
        time.sleep(0.1)
    kind, key = (d / "host_ed25519.pub").read_text().split()[:2]
    return proc, port, f"[127.0.0.1]:{port} {kind} {key}\n"


@pytest.fixture
def sshd_pair(tmp_path):
    """Two sshds on loopback (a bastion and a device), one client key, one known_hosts for both."""
    if not Path(SSHD).exists():
        pytest.fail("sshd is missing: scripts/setup.sh installs openssh-server")
    _keygen(tmp_path / "client")
    procs = []
    try:
        bastion, bastion_port, bastion_line = _start_sshd(tmp_path / "bastion", tmp_path / "client.pub")
        procs.append(bastion)
        device, device_port, device_line = _start_sshd(tmp_path / "device", tmp_path / "client.pub")
        procs.append(device)
        yield {"client_key": tmp_path / "client", "bastion_port": bastion_port, "device_port": device_port,
               "bastion_line": bastion_line, "device_line": device_line}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def local_sshd(tmp_path):
    """Run sshd as root on 127.0.0.1:<free port> for one test; stop it afterwards."""
    if not Path(SSHD).exists():
        pytest.fail("sshd is missing: scripts/setup.sh installs openssh-server")
    _keygen(tmp_path / "client")
    proc, port, line = _start_sshd(tmp_path / "sshd", tmp_path / "client.pub")
    known = tmp_path / "known_hosts"
    known.write_text(line)
    try:
        yield LocalSSHD(port, tmp_path / "client", " ".join(line.split()[1:3]), known, tmp_path / "sshd")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def lab_targets(tmp_path_factory, names: list[str], board: str | None = None):
    """Yield the targets of a fresh amd64 lab with an inventory of its own; remove the lab after.

    Boards round-robin (pi5, orin-nano, rk3588) unless `board` names one for every device.
    """
    targets = tmp_path_factory.mktemp("targets")
    shutil.copytree(REPO / "targets" / "boards", targets / "boards")
    paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=targets)
    try:
        with lab.session(paths, devices=len(names), arch="amd64", board=board):
            inventory = load_inventory(targets)
            yield [inventory.target(n) for n in names]
    except lab.LabBusy as exc:
        pytest.fail(f"{exc} before these tests")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny random BERT's INT8 bundle, made once per module that deploys one."""
    from edgefleet.model.tiny import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("tiny"))["bundle_dir"]


@pytest.fixture(scope="module")
def one_lab_device(tmp_path_factory):
    """A lab of one amd64 device, lab-01, for this test module."""
    for targets in lab_targets(tmp_path_factory, ["lab-01"]):
        yield targets[0]


@pytest.fixture(scope="module")
def rk3588_lab_device(tmp_path_factory):
    """A lab of one amd64 device shaped like an RK3588 (big cores 4-7, which this host lacks), lab-01."""
    for targets in lab_targets(tmp_path_factory, ["lab-01"], board="rk3588"):
        yield targets[0]


@pytest.fixture(scope="module")
def three_lab_devices(tmp_path_factory):
    """A lab of three amd64 devices, lab-01..lab-03, for this test module."""
    yield from lab_targets(tmp_path_factory, ["lab-01", "lab-02", "lab-03"])


def on_device(target, command: str) -> str:
    """Run `command` on a target over a verified SSH connection; return its stdout."""
    conn = connect(target)
    try:
        return conn.run(command, hide=True, warn=True, in_stream=False).stdout.strip()
    finally:
        conn.close()


@pytest.fixture
def run_on():
    return on_device
