"""SSH against a real sshd on loopback: host keys are verified, never auto-added."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from edgefleet.inventory import load_inventory
from edgefleet.transport import SSHError, connect, openssh_argv

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def short_dir(tmp_path) -> str:
    """A private dir for this test's control sockets, short enough for a socket's path."""
    import tempfile
    return tempfile.mkdtemp(prefix="ef-")


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request, monkeypatch, tmp_path):
    """Run the test through each transport `connect` can give: OpenSSH (masters in a private dir) and Fabric."""
    if request.param == "paramiko":
        monkeypatch.setenv("EDGEFLEET_SSH_TRANSFER", "paramiko")
    else:
        monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    return request.param


def target_for(sshd, known_hosts: Path):
    base = load_inventory(REPO / "targets").target("pi5-01")
    return dataclasses.replace(base, name="local", host="127.0.0.1", port=sshd.port, user="root",
                               ssh_key=sshd.client_key, known_hosts=known_hosts)


def test_known_key_connects(local_sshd, transport):
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        assert conn.run("echo ok", hide=True, in_stream=False).stdout.strip() == "ok"
    finally:
        conn.close()


def test_unknown_key_is_refused_with_a_hint(local_sshd, tmp_path, transport):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SSHError) as err:
        connect(target_for(local_sshd, empty))
    message = str(err.value)
    assert f"unknown host key for [127.0.0.1]:{local_sshd.port}" in message
    assert f"ssh-keyscan -p {local_sshd.port}" in message
    assert empty.read_text() == ""  # nothing was added behind the user's back


def test_changed_key_is_refused(local_sshd, tmp_path, transport):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{local_sshd.port} {kind} {key}\n")
    with pytest.raises(SSHError, match="HOST KEY CHANGED"):
        connect(target_for(local_sshd, wrong))


def test_unreachable_port_names_the_target(local_sshd, transport):
    tgt = dataclasses.replace(target_for(local_sshd, local_sshd.known_hosts), port=1)
    with pytest.raises(SSHError, match=r"local: cannot reach \[127.0.0.1\]:1"):
        connect(tgt, timeout=3)


def test_openssh_transfer_trusts_only_the_targets_known_hosts(local_sshd, tmp_path):
    """The bulk-transfer client (OpenSSH) verifies host keys as `connect` does: known works,
    unknown and changed keys are refused, and nothing is ever added to known_hosts."""
    argv = openssh_argv(target_for(local_sshd, local_sshd.known_hosts))
    assert argv is not None and "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    ok = subprocess.run([*argv, "echo ok"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    unknown = subprocess.run([*openssh_argv(target_for(local_sshd, empty)), "true"], capture_output=True,
                             text=True, timeout=30)
    assert unknown.returncode == 255 and "verification failed" in unknown.stderr
    assert empty.read_text() == ""
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "wrong"
    wrong.write_text(f"[127.0.0.1]:{local_sshd.port} {kind} {key}\n")
    changed = subprocess.run([*openssh_argv(target_for(local_sshd, wrong)), "true"], capture_output=True,
                             text=True, timeout=30)
    assert changed.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in changed.stderr


def test_openssh_transfer_can_be_turned_off(local_sshd, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SSH_TRANSFER", "paramiko")
    assert openssh_argv(target_for(local_sshd, local_sshd.known_hosts)) is None


def ssh_config(home: Path, pair: dict, known_hosts: Path) -> None:
    (home / ".ssh").mkdir(exist_ok=True)
    (home / ".ssh" / "config").write_text(
        f"Host edge-device\n  HostName 127.0.0.1\n  Port {pair['device_port']}\n  User root\n"
        f"  IdentityFile {pair['client_key']}\n  UserKnownHostsFile {known_hosts}\n  ProxyJump bastion\n"
        f"Host bastion\n  HostName 127.0.0.1\n  Port {pair['bastion_port']}\n  User root\n"
        f"  IdentityFile {pair['client_key']}\n  UserKnownHostsFile {known_hosts}\n"
    )


def config_only_target():
    """A device the inventory names by an ssh_config alias, with nothing else set."""
    base = load_inventory(REPO / "targets").target("pi5-01")
    return dataclasses.replace(base, name="edge", host="edge-device", port=None, user=None,
                               ssh_key=None, known_hosts=None)


def test_ssh_config_and_proxyjump(sshd_pair, _hide_user_ssh, tmp_path, transport):
    known = tmp_path / "known_hosts"
    known.write_text(sshd_pair["bastion_line"] + sshd_pair["device_line"])
    ssh_config(_hide_user_ssh, sshd_pair, known)
    conn = connect(config_only_target())
    try:
        assert (conn.port, conn.user) == (sshd_pair["device_port"], "root")
        if transport == "paramiko":
            assert conn.gateway is not None and conn.gateway.is_connected  # it went through the bastion
        else:
            assert conn.resolved["proxyjump"] == "bastion"
        assert conn.run("echo via-bastion", hide=True, in_stream=False).stdout.strip() == "via-bastion"
    finally:
        conn.close()


def test_unknown_bastion_key_is_refused(sshd_pair, _hide_user_ssh, tmp_path, transport):
    known = tmp_path / "known_hosts"
    known.write_text(sshd_pair["device_line"])  # the device is known, the jump host is not
    ssh_config(_hide_user_ssh, sshd_pair, known)
    with pytest.raises(SSHError) as err:
        connect(config_only_target())
    bastion = f"[127.0.0.1]:{sshd_pair['bastion_port']}"
    assert f"unknown host key for {bastion} (a ProxyJump host on the way)" in str(err.value)
    assert f"ssh-keyscan -p {sshd_pair['bastion_port']} -t ed25519 127.0.0.1" in str(err.value)
    assert known.read_text() == sshd_pair["device_line"]


def test_openssh_master_is_reused_and_private(local_sshd, monkeypatch, tmp_path):
    """A second connect (another run) finds the device's master up and needs no new login; the
    socket lives in a 0700 dir of ours; a master that is gone is replaced by the next connect."""
    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    first = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        assert first.alive() and first.control_path.parent.stat().st_mode & 0o777 == 0o700
        pid = first.run("echo $PPID", hide=True).stdout.strip()
        second = connect(target_for(local_sshd, local_sshd.known_hosts))
        assert second.control_path == first.control_path
        # the same sshd connection process serves both: one login, two sessions
        assert _session_parent(second, pid) == _session_parent(first, pid)
        first.exit_master()
        assert not first.alive()
        third = connect(target_for(local_sshd, local_sshd.known_hosts))
        assert third.alive() and third.run("echo back", hide=True).stdout.strip() == "back"
    finally:
        first.exit_master()


def _session_parent(conn, _pid: str) -> str:
    """Return the pid of the sshd process that owns this session's connection (the shell's grandparent)."""
    return conn.run("ps -o ppid= -p $PPID", hide=True).stdout.strip()


def test_openssh_http_over_the_master(local_sshd, monkeypatch, tmp_path):
    """HTTP to a loopback port on the device goes through `ssh -W`; a closed port is ConnectionRefusedError."""
    import socket
    import sys
    import time

    from edgefleet.transport import http_over_ssh

    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        with pytest.raises(ConnectionRefusedError):
            http_over_ssh(conn, port, "/readyz", timeout=10)
        (tmp_path / "www").mkdir()
        (tmp_path / "www" / "readyz").write_text("ready")
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(tmp_path / "www")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    status, _, body = http_over_ssh(conn, port, "/readyz", timeout=10)
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline, "the test's HTTP server never listened"
                    time.sleep(0.2)
            assert (status, body) == (200, b"ready")
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        conn.exit_master()


def test_openssh_commands_talk_to_the_master_in_process(local_sshd, monkeypatch, tmp_path):
    """With a master up, a command is a request on its socket (no `ssh` started): input, large
    output on both streams and the exit status come back whole; a gone master falls back to a client."""
    import edgefleet.transport.openssh as openssh_mod

    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        real_run = subprocess.run
        started = []
        real_popen = subprocess.Popen
        monkeypatch.setattr(openssh_mod.subprocess, "run", lambda *a, **k: started.append(a) or real_run(*a, **k))
        # the client fallback reads the output as it comes (Popen), to keep only its tail
        monkeypatch.setattr(openssh_mod.subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
        res = conn.run("wc -c; head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2; exit 3", warn=True,
                       in_stream=b"y" * 500_000)
        assert res.exited == 3 and res.stdout.startswith("500000\n") and res.stdout.count("x") == 3_000_000
        assert res.stderr == "done\n" and started == []
        conn.exit_master()
        started.clear()
        assert conn.run("echo fallback", hide=True).stdout.strip() == "fallback" and len(started) == 1
    finally:
        conn.exit_master()


def test_openssh_many_threads_with_input_over_one_master(local_sshd, monkeypatch, tmp_path):
    """A rollout's threads share masters and pipes: 64 commands with input, 16 at once, all come back
    whole (past sshd's MaxSessions of 10 on one connection, a command goes through a client of its own)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    try:
        def one(i: int) -> str:
            return conn.run("wc -c", hide=True, in_stream=b"z" * (1000 * (i + 1))).stdout.strip()
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(one, range(64)))
        assert got == [str(1000 * (i + 1)) for i in range(64)]
    finally:
        conn.exit_master()


def test_openssh_stream_is_read_by_the_master_itself(local_sshd, monkeypatch, tmp_path):
    """An upload's stream: the master reads our pipe (no `ssh` started); the exit status and the
    whole of stderr are there once `wait` returns; a gone master falls back to a client."""
    import tempfile

    import edgefleet.transport.openssh as openssh_mod

    monkeypatch.delenv("EDGEFLEET_SSH_TRANSFER", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir(tmp_path))
    conn = connect(target_for(local_sshd, local_sshd.known_hosts))
    out = tmp_path / "got"
    try:
        real_popen = subprocess.Popen
        started = []
        monkeypatch.setattr(openssh_mod.subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
        for attempt in range(2):  # over the master, then (master gone) through a client
            with tempfile.TemporaryFile() as err:
                proc = conn.stream(f"cat > {out}; head -c 200000 /dev/zero | tr '\\0' e >&2; exit 7", err)
                data = b"w" * 3_000_000
                view = memoryview(data)
                while view:
                    view = view[proc.stdin.write(view[:65536]):]
                proc.stdin.close()
                assert proc.wait() == 7
                err.seek(0)
                assert err.read() == b"e" * 200_000
            assert out.read_bytes() == data
            assert len([a for a in started if "cat >" in str(a[0][-1])]) == attempt  # an `ssh` only the 2nd time
            conn.exit_master()
    finally:
        conn.exit_master()
