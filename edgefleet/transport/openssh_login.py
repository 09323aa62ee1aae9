"""Log in through the OpenSSH client: its options for a target, the first login (which starts
the device's master), and why a login failed, in words (changed or unknown host key, unreachable)."""

from __future__ import annotations

import re
import subprocess

from ..inventory import Target
from .base import Endpoint, OpenSSHError, SSHError, trust_hint
from .openssh import OpenSSHConnection
from .sshconfig import openssh_client

__all__ = ["connect_openssh", "openssh_argv"]


def _openssh_options(ep: Endpoint, timeout: float) -> list[str]:
    argv = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={int(timeout)}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
    if ep.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={ep.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if ep.ssh_key is not None:
        argv += ["-i", str(ep.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    if ep.port is not None:
        argv += ["-p", str(ep.port)]
    if ep.user is not None:
        argv += ["-l", ep.user]
    return argv


def connect_openssh(ep: Endpoint, timeout: float) -> OpenSSHConnection:
    if ep.ssh_key is not None and not ep.ssh_key.is_file():
        raise SSHError(f"{ep.name}: ssh_key {ep.ssh_key} does not exist")
    try:
        conn = OpenSSHConnection(ep.name, ep.host, _openssh_options(ep, timeout), timeout, ep.known_hosts)
        conn.open()
    except OpenSSHError as exc:
        raise SSHError(_openssh_reason(ep, conn if "conn" in locals() else None, str(exc))) from None
    except subprocess.TimeoutExpired:
        raise SSHError(f"{ep.name}: SSH to {ep.host} did not answer within {timeout * 4:.0f} s") from None
    return conn


def _openssh_reason(ep: Endpoint, conn: OpenSSHConnection | None, stderr: str) -> str:
    """Say why the OpenSSH client failed, as `connect` says it for Fabric."""
    text = stderr.strip()
    if conn is None:
        return f"{ep.name}: {text}"
    changed = re.search(r"Host key for (\S+) has changed", text)
    if changed or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        got = re.search(r"key sent by the remote host is\s+(\S+?)\.?$", text, re.M)
        where = re.search(r"Offending \S+ key in (\S+)", text)
        return (f"{ep.name}: HOST KEY CHANGED for {changed.group(1) if changed else conn.address}: got "
                f"{got.group(1) if got else 'another key'}, "
                f"not the one in {where.group(1) if where else conn.known_hosts}. "
                "Refusing to connect; if the device was reinstalled, remove the old line and trust the new key.")
    unknown = re.search(r"No \S+ host key is known for (\S+) and", text)
    if unknown or "Host key verification failed" in text:
        server = unknown.group(1) if unknown else conn.address
        hop = "" if server == conn.address else " (a ProxyJump host on the way)"
        return (f"{ep.name}: unknown host key for {server}{hop} (not in {conn.known_hosts}); "
                + trust_hint(server, conn.known_hosts))
    unreachable = re.search(r"ssh: connect to host \S+ port \d+: (.+)$|ssh: Could not resolve hostname \S+: (.+)$",
                            text, re.M)
    if unreachable:
        return f"{ep.name}: cannot reach {conn.address}: {(unreachable.group(1) or unreachable.group(2)).strip()}"
    return f"{ep.name}: SSH to {conn.user}@{conn.address} failed: {text[-500:] or 'no reason given'}"


def openssh_argv(target: Target | Endpoint, timeout: float = 15.0) -> list[str] | None:
    """Return the OpenSSH client argv (up to and including the host) for bulk transfers, or None.

    The same trust as `connect`: host keys only from the target's known_hosts (or ~/.ssh/config's),
    never added; the target's key only. OpenSSH moves bytes several times faster than paramiko
    and each device's transfer is its own process. None when there is no `ssh` client or
    EDGEFLEET_SSH_TRANSFER=paramiko: then everything goes through `connect`.
    """
    ssh = openssh_client()
    if ssh is None:
        return None
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    return [ssh, *_openssh_options(ep, timeout), "--", ep.host]
