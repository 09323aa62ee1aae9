"""SSH against a real sshd on loopback: host keys are verified, never auto-added."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from edgefleet.inventory import load_inventory
from edgefleet.ssh import SSHError, connect

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def target_for(sshd, known_hosts: Path):
    base = load_inventory(REPO / "targets").target("pi5-01")
    return dataclasses.replace(base, name="local", host="127.0.0.1", port=sshd.port, user="root",
                               ssh_key=sshd.client_key, known_hosts=known_hosts)


def test_known_key_connects(local_sshd):
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        assert conn.run("echo ok", hide=True, in_stream=False).stdout.strip() == "ok"
    finally:
        conn.close()


def test_unknown_key_is_refused_with_a_hint(local_sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SSHError) as err:
        connect(target_for(local_sshd, empty))
    message = str(err.value)
    assert f"unknown host key for [127.0.0.1]:{local_sshd.port}" in message
    assert f"ssh-keyscan -p {local_sshd.port}" in message
    assert empty.read_text() == ""  # nothing was added behind the user's back


def test_changed_key_is_refused(local_sshd, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{local_sshd.port} {kind} {key}\n")
    with pytest.raises(SSHError, match="HOST KEY CHANGED"):
        connect(target_for(local_sshd, wrong))


def test_unreachable_port_names_the_target(local_sshd):
    tgt = dataclasses.replace(target_for(local_sshd, local_sshd.known_hosts), port=1)
    with pytest.raises(SSHError, match=r"local: cannot reach \[127.0.0.1\]:1"):
        connect(tgt, timeout=3)
