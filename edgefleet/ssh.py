"""The one place that opens SSH connections: Fabric, with host keys always verified."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from pathlib import Path

import paramiko
from fabric import Connection

from .inventory import Target

__all__ = ["connect", "SSHError", "http_json_over_ssh"]


# paramiko logs a refused channel (service not listening yet) as an ERROR before raising it;
# we handle the exception, so the log line is only noise.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


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


class _ChannelHTTPConnection(http.client.HTTPConnection):
    """HTTP over an SSH direct-tcpip channel: no local port, nothing left listening."""

    def __init__(self, transport: paramiko.Transport, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._transport = transport

    def connect(self) -> None:
        channel = self._transport.open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0),
                                               timeout=self.timeout)
        channel.settimeout(self.timeout)
        self.sock = channel


def http_json_over_ssh(conn: Connection, port: int, path: str, payload: dict | None = None,
                       timeout: float = 120.0) -> tuple[int, dict]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; decode the JSON answer.

    A refused connection (service not listening yet) raises ConnectionRefusedError.
    """
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active():
        raise SSHError(f"{conn.host}:{conn.port}: SSH connection is closed")
    http = _ChannelHTTPConnection(transport, "127.0.0.1", port, timeout)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Connection": "close"}
        try:
            http.request("GET" if body is None else "POST", path, body=body, headers=headers)
        except paramiko.ChannelException as exc:
            raise ConnectionRefusedError(f"127.0.0.1:{port} on the device: {exc}") from None
        response = http.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw or b"{}")
        except ValueError:
            return response.status, {"error": raw.decode(errors="replace")[:200]}
    finally:
        http.close()
