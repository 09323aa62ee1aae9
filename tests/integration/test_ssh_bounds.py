"""A persisted master does not outlive a change of trust, and a device command is bounded in time
and in the bytes the controller keeps (real sshd on loopback, the OpenSSH transport)."""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import pytest

from edgefleet.inventory import load_inventory
from edgefleet.transport import SSHError, connect

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OUTPUT_CAP = 8 * 2**20  # edgefleet.transport.base.OUTPUT_CAP


def target_for(sshd, known_hosts: Path):
    base = load_inventory(REPO / "targets").target("pi5-01")
    return dataclasses.replace(base, name="local", host="127.0.0.1", port=sshd.port, user="root",
                               ssh_key=sshd.client_key, known_hosts=known_hosts)


@pytest.fixture
def openssh(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="ef-"))  # short: a socket's path


def test_an_emptied_known_hosts_is_seen_while_a_master_persists(local_sshd, openssh):
    first = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        assert first.alive()
        local_sshd.known_hosts.write_text("")  # the device is no longer trusted
        with pytest.raises(SSHError):
            connect(target_for(local_sshd, local_sshd.known_hosts))
    finally:
        first.exit_master()


@pytest.mark.parametrize("persist", ["120", "0"], ids=["over-the-master", "ssh-client"])
def test_a_hanging_command_times_out_and_a_flood_keeps_its_tail(local_sshd, openssh, monkeypatch, persist):
    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST", persist)
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        t0 = time.monotonic()
        with pytest.raises(Exception, match="did not end within 2 s"):  # CommandTimeout
            conn.run("sleep 30", hide=True, in_stream=False, timeout=2)
        assert time.monotonic() - t0 < 10
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = conn.run("head -c 300M /dev/zero; echo the-last-line", hide=True, in_stream=False, timeout=120)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert res.stdout.rstrip().endswith("the-last-line") and len(res.stdout) <= OUTPUT_CAP + 200
        assert grown_mib < 120, f"RSS grew {grown_mib:.0f} MiB"
    finally:
        if persist != "0":
            conn.exit_master()


def test_the_fabric_transport_keeps_a_floods_tail_too(local_sshd, monkeypatch):
    """#19: captured output is capped on the paramiko fallback as on OpenSSH (it kept all of it)."""
    monkeypatch.setenv("EDGEFLEET_SSH_TRANSFER", "paramiko")
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        assert type(conn).__name__ == "FabricConnection"
        res = conn.run("head -c 40M /dev/zero | tr '\\0' x; echo; echo the-last-line", hide=True, in_stream=False,
                       warn=True)
        assert res.stdout.rstrip().endswith("the-last-line") and len(res.stdout) <= OUTPUT_CAP + 200
        assert res.stdout.startswith("[edgefleet: the first ")
    finally:
        conn.close()
