"""The OpenSSH transport's pure parts: its argv, what it makes of the client's messages, its socket dir."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgefleet.transport import Endpoint, OpenSSHError, openssh, openssh_process, sshconfig
from edgefleet.transport.openssh_login import _openssh_options, _openssh_reason

EP = Endpoint("pi5-01", "10.0.0.5", 2201, "deploy", None, Path("/inv/known_hosts"))
CONN = SimpleNamespace(address="[10.0.0.5]:2201", known_hosts=Path("/inv/known_hosts"), user="deploy")

UNKNOWN = ("No ED25519 host key is known for [10.0.0.5]:2201 and you have requested strict checking.\n"
           "Host key verification failed.\n")
UNKNOWN_HOP = ("No ED25519 host key is known for [10.0.0.9]:22 and you have requested strict checking.\n"
               "Host key verification failed.\nkex_exchange_identification: Connection closed by remote host\n")
CHANGED = ("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
           "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
           "The fingerprint for the ED25519 key sent by the remote host is\nSHA256:abcDEF123.\n"
           "Offending ED25519 key in /inv/known_hosts:3\n"
           "Host key for [10.0.0.5]:2201 has changed and you have requested strict checking.\n"
           "Host key verification failed.\n")


@pytest.mark.parametrize("stderr, expected", [
    (UNKNOWN, ["pi5-01: unknown host key for [10.0.0.5]:2201 (not in /inv/known_hosts)",
               "ssh-keyscan -p 2201 -t ed25519 10.0.0.5 >> /inv/known_hosts"]),
    (UNKNOWN_HOP, ["unknown host key for [10.0.0.9]:22 (a ProxyJump host on the way)", "ssh-keyscan -p 22"]),
    (CHANGED, ["pi5-01: HOST KEY CHANGED for [10.0.0.5]:2201: got SHA256:abcDEF123, not the one in "
               "/inv/known_hosts:3", "Refusing to connect"]),
    ("ssh: connect to host 10.0.0.5 port 2201: Connection refused\n",
     ["pi5-01: cannot reach [10.0.0.5]:2201: Connection refused"]),
    ("ssh: connect to host 10.0.0.5 port 2201: Connection timed out\n", ["cannot reach [10.0.0.5]:2201: Connection timed out"]),
    ("ssh: Could not resolve hostname nowhere: Name or service not known\n",
     ["cannot reach [10.0.0.5]:2201: Name or service not known"]),
    ("deploy@10.0.0.5: Permission denied (publickey).\n",
     ["pi5-01: SSH to deploy@[10.0.0.5]:2201 failed: deploy@10.0.0.5: Permission denied (publickey)."]),
])
def test_client_messages_become_the_same_errors_as_fabrics(stderr, expected):
    message = _openssh_reason(EP, CONN, stderr)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("stderr, failed", [
    ("ssh: connect to host 1.2.3.4 port 22: Connection refused\n", True),
    ("Connection closed by 127.0.0.1 port 2201\n", True),
    ("client_loop: send disconnect: Broken pipe\n", True),
    ("mux_client_request_session: read from master failed: Broken pipe\n", True),
    ("Stdio forwarding request failed: Session open refused by peer\n", True),
    ("", False),  # a remote command that exits 255 quietly
    ("tar: Exiting with failure status\n", False),
    ("error: ssh: is not a command here\n", False),
])
def test_exit_255_is_the_links_only_when_the_client_says_so(stderr, failed):
    assert openssh_process.ssh_failed(stderr) is failed


def test_a_gone_master_is_not_reported_as_the_commands_stderr():
    noisy = "Control socket connect(/run/x/abc): Connection refused\nreal error\n"
    assert openssh_process.without_mux_noise(noisy) == "real error\n"


@pytest.mark.parametrize("raw, expected", [("", 120), ("0", 0), ("600", 600)])
def test_persist_seconds(monkeypatch, raw, expected):
    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST", raw)
    assert sshconfig.persist_seconds() == expected


def test_persist_seconds_refuses_junk(monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST", "2m")
    with pytest.raises(OpenSSHError, match="EDGEFLEET_SSH_PERSIST='2m'"):
        sshconfig.persist_seconds()


@pytest.fixture
def short_dir():
    """A dir short enough for control sockets (tmp_path can be too long for sun_path)."""
    path = Path(tempfile.mkdtemp(prefix="ef-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_control_dir_is_private(monkeypatch, short_dir):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    path = sshconfig.control_dir()
    assert path.parent == short_dir and (path.stat().st_mode & 0o777) == 0o700


def test_control_dir_too_long_for_a_socket_falls_back(monkeypatch, tmp_path):
    deep = tmp_path / ("x" * 80)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    path = sshconfig.control_dir()
    assert len(str(path)) + 17 <= 90 and (path.stat().st_mode & 0o777) == 0o700


def test_control_dir_anyone_could_use_is_refused(monkeypatch, short_dir):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    shared = short_dir / f"edgefleet-ssh-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OpenSSHError, match="mode 0700"):
        sshconfig.control_dir()


def _conn(monkeypatch, tmp_path, persist: str) -> openssh.OpenSSHConnection:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST", persist)
    return openssh.OpenSSHConnection("pi5-01", "10.0.0.5", _openssh_options(EP, 15), 15)


def test_commands_go_over_the_devices_master(monkeypatch, short_dir):
    conn = _conn(monkeypatch, short_dir, "120")
    argv = conn.argv("echo ok")
    assert argv[-3:] == ["--", "10.0.0.5", "echo ok"]
    assert "ControlMaster=no" in argv and f"ControlPath={conn.control_path}" in argv
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/inv/known_hosts" in argv
    # another trust (known_hosts, key, user, port) never shares this master
    other = openssh.OpenSSHConnection("pi5-01", "10.0.0.5", _openssh_options(
        Endpoint("pi5-01", "10.0.0.5", 2201, "deploy", None, Path("/other/known_hosts")), 15), 15)
    assert other.control_path != conn.control_path
    # a probe with a shorter timeout (lab.up waiting for sshd) and a deploy share it
    probe = openssh.OpenSSHConnection("pi5-01", "10.0.0.5", _openssh_options(EP, 5), 5)
    assert probe.control_path == conn.control_path


def test_no_masters_when_persist_is_zero(monkeypatch, short_dir):
    conn = _conn(monkeypatch, short_dir, "0")
    assert conn.control_path is None and not any("Control" in a for a in conn.argv("true"))


@pytest.mark.parametrize("given, expected", [
    (None, None), (False, None), ("text", b"text"), (b"\x00\xff", b"\x00\xff"), (io.StringIO("req"), b"req"),
    (io.BytesIO(b"raw"), b"raw"),
])
def test_input_streams(given, expected):
    assert openssh_process.input_bytes(given) == expected


def test_every_hop_gets_the_trust_settings_first(monkeypatch, short_dir):
    """The client config (`ssh -F`, which ProxyJump clients inherit) forces strict keys, then includes the user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.setenv("HOME", str(short_dir))
    (short_dir / ".ssh").mkdir()
    (short_dir / ".ssh" / "config").write_text("Host bastion\n  StrictHostKeyChecking no\n")
    text = sshconfig.client_config(Path("/inv/known_hosts")).read_text().splitlines()
    assert text[1:6] == ["Host *", "  StrictHostKeyChecking yes", "  BatchMode yes", "  LogLevel ERROR",
                         "  UserKnownHostsFile /inv/known_hosts"]
    assert text.index(f"  Include {short_dir}/.ssh/config") > text.index("  StrictHostKeyChecking yes")
    with pytest.raises(OpenSSHError, match="spaces or quotes"):
        sshconfig.client_config(Path("/inv/my hosts"))


def test_client_config_written_by_many_threads_at_once(monkeypatch, short_dir):
    """A rollout opens its devices' connections in parallel threads: the shared config file is
    written once per content, and no thread sees another's half-written file."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.setenv("HOME", str(short_dir))
    with ThreadPoolExecutor(16) as pool:
        paths = set(pool.map(lambda _: sshconfig.client_config(Path("/inv/known_hosts")), range(64)))
    assert len(paths) == 1 and "StrictHostKeyChecking yes" in paths.pop().read_text()
    assert not list(sshconfig.control_dir().glob("*.tmp"))


def _effective(config: Path, host: str = "pi5-01") -> dict[str, str]:
    out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True).stdout
    return dict(line.partition(" ")[::2] for line in out.splitlines())


def test_aes_gcm_first_unless_the_user_says_otherwise(monkeypatch, short_dir):
    """AES-GCM leads the cipher list on a host with AES instructions; a user's Ciphers (for one
    host, e.g. a Raspberry Pi 4 without them) wins, and EDGEFLEET_SSH_CIPHERS sets or clears it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.setenv("HOME", str(short_dir))
    monkeypatch.delenv("EDGEFLEET_SSH_CIPHERS", raising=False)
    monkeypatch.setattr(sshconfig, "_cpu_has_aes", lambda: True)
    assert _effective(sshconfig.client_config(None))["ciphers"].startswith("aes128-gcm@openssh.com,aes256-gcm")
    (short_dir / ".ssh").mkdir()
    (short_dir / ".ssh" / "config").write_text("Host pi4-*\n  Ciphers chacha20-poly1305@openssh.com\n")
    config = sshconfig.client_config(None)
    assert _effective(config, "pi4-07")["ciphers"] == "chacha20-poly1305@openssh.com"
    assert _effective(config, "pi5-01")["ciphers"].startswith("aes128-gcm@openssh.com")
    monkeypatch.setattr(sshconfig, "_cpu_has_aes", lambda: False)  # OpenSSH's own order
    assert _effective(sshconfig.client_config(None))["ciphers"].startswith("chacha20-poly1305@openssh.com")
    monkeypatch.setenv("EDGEFLEET_SSH_CIPHERS", "aes256-gcm@openssh.com")
    assert _effective(sshconfig.client_config(None), "pi5-01")["ciphers"] == "aes256-gcm@openssh.com"
    monkeypatch.setenv("EDGEFLEET_SSH_CIPHERS", "aes256-gcm; rm -rf /")
    with pytest.raises(OpenSSHError, match="EDGEFLEET_SSH_CIPHERS"):
        sshconfig.client_config(None)
