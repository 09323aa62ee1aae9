"""What a device says reaches the terminal as text (never rich markup), and a changed known_hosts
is seen by a persisted master (its control path is keyed by the file's content)."""

from __future__ import annotations

import pytest

from edgefleet.status import TargetStatus
from edgefleet.tasks import fleet
from edgefleet.transport.base import OUTPUT_CAP, TailBuffer


@pytest.mark.parametrize("hostile", ["[/]", "[bold]x", "[link=file:///etc/passwd]y[/link]", "\\[/]"])
def test_status_prints_device_strings_as_they_are(capsys, monkeypatch, hostile):
    monkeypatch.setenv("COLUMNS", "400")  # no cell cut short
    st = TargetStatus("lab-01", True, release="r-1", governors={"policy0": hostile}, service=hostile,
                      throttling=hostile, drift=[f"cpufreq policy0 governor is {hostile}"])
    fleet._print_status_table([st])
    assert hostile in capsys.readouterr().out.replace("\n", "")


def test_rollback_table_prints_device_errors_as_they_are(capsys):
    from edgefleet.deploy.rollback import RollbackResult
    fleet._print_rollback_table([RollbackResult("lab-01", "r-[/]", None, False, None, error="boom [/] here")])
    assert "boom [/] here" in capsys.readouterr().out


def test_a_changed_known_hosts_gets_a_master_of_its_own(tmp_path, monkeypatch):
    from edgefleet.transport.openssh import OpenSSHConnection

    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST", "60")
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1\n")
    first = OpenSSHConnection("d", "127.0.0.1", ["-p", "2222"], 5, known_hosts=known).control_path
    again = OpenSSHConnection("d", "127.0.0.1", ["-p", "2222"], 5, known_hosts=known).control_path
    known.write_text("")  # the key removed: the old master must not be reused
    emptied = OpenSSHConnection("d", "127.0.0.1", ["-p", "2222"], 5, known_hosts=known).control_path
    assert first == again and emptied != first


def test_output_keeps_its_tail_within_the_cap():
    buf = TailBuffer(cap=1000)
    for i in range(500):
        buf.add(b"x" * 97 + f"{i:03d}".encode())
    out = buf.value()
    assert out.endswith(b"499") and len(out) < 1100 and out.startswith(b"[edgefleet: the first ")
    assert OUTPUT_CAP >= 2**20  # the facts' object listing of a big device fits


def test_no_cap_note_on_short_output():
    buf = TailBuffer(cap=1000)
    buf.add(b"hello")
    assert buf.value() == b"hello"

