"""The one place that opens SSH connections: Fabric, with host keys always verified."""

from __future__ import annotations

import socket
from pathlib import Path

import paramiko
from fabric import Connection

from .inventory import Target

__all__ = ["connect", "SSHError", "free_local_port"]


class SSHError(Exception):
    """A target could not be reached or did not prove who it is."""


def _endpoint(target: Target) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def _trust_hint(target: Target, known_hosts: Path) -> str:
    return (
        f"check the key out of band (e.g. on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then add it: ssh-keyscan -p {target.port} -t ed25519 {target.host} >> {known_hosts} "
        f"and compare: ssh-keygen -lf {known_hosts}"
    )


def connect(target: Target, timeout: float = 15.0) -> Connection:
    """Open a Fabric connection to `target`, refusing unknown or changed host keys."""
    known_hosts = target.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    connect_kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if target.ssh_key is not None:
        if not target.ssh_key.is_file():
            raise SSHError(f"{target.name}: ssh_key {target.ssh_key} does not exist (from {target.source})")
        connect_kwargs.update(key_filename=str(target.ssh_key), look_for_keys=False, allow_agent=False)
    conn = Connection(
        host=target.host,
        port=target.port,
        user=target.user,
        connect_timeout=int(timeout),
        connect_kwargs=connect_kwargs,
    )
    # Fabric auto-adds unknown host keys by default; we never do.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if known_hosts.is_file():
        conn.client.load_host_keys(str(known_hosts))
    endpoint = _endpoint(target)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise SSHError(
            f"{target.name}: HOST KEY CHANGED for {endpoint}: got {exc.key.get_name()} "
            f"{exc.key.fingerprint}, expected {exc.expected_key.fingerprint} from {known_hosts}. "
            "Refusing to connect; if the device was reinstalled, remove the old line and trust the new key."
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise SSHError(
                f"{target.name}: unknown host key for {endpoint} (not in {known_hosts}); "
                + _trust_hint(target, known_hosts)
            ) from None
        raise SSHError(f"{target.name}: SSH to {target.user}@{endpoint} failed: {exc}") from None
    except (OSError, socket.timeout) as exc:
        raise SSHError(f"{target.name}: cannot reach {endpoint}: {exc}") from None
    return conn


def free_local_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
