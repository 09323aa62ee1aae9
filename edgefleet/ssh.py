"""The one place that opens SSH connections: Fabric, with host keys always verified."""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

from .inventory import Target

__all__ = ["connect", "Endpoint", "SSHError", "http_json_over_ssh"]


# paramiko logs a refused channel (service not listening yet) as an ERROR before raising it;
# we handle the exception, so the log line is only noise.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


class SSHError(Exception):
    """A target could not be reached or did not prove who it is."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in, and which host keys to trust."""

    name: str
    host: str
    port: int
    user: str
    ssh_key: Path | None
    known_hosts: Path | None

    @classmethod
    def of(cls, target: Target) -> "Endpoint":
        return cls(target.name, target.host, target.port, target.user, target.ssh_key, target.known_hosts)

    @property
    def address(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _trust_hint(ep: Endpoint, known_hosts: Path) -> str:
    return (
        f"check the key out of band (e.g. on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then add it: ssh-keyscan -p {ep.port} -t ed25519 {ep.host} >> {known_hosts} "
        f"and compare: ssh-keygen -lf {known_hosts}"
    )


def connect(target: Target | Endpoint, timeout: float = 15.0) -> Connection:
    """Open a Fabric connection to a target, refusing unknown or changed host keys."""
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    known_hosts = ep.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    connect_kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if ep.ssh_key is not None:
        if not ep.ssh_key.is_file():
            raise SSHError(f"{ep.name}: ssh_key {ep.ssh_key} does not exist")
        connect_kwargs.update(key_filename=str(ep.ssh_key), look_for_keys=False, allow_agent=False)
    conn = Connection(host=ep.host, port=ep.port, user=ep.user, connect_timeout=int(timeout),
                      connect_kwargs=connect_kwargs)
    # Fabric auto-adds unknown host keys by default; we never do.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if known_hosts.is_file():
        conn.client.load_host_keys(str(known_hosts))
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise SSHError(
            f"{ep.name}: HOST KEY CHANGED for {ep.address}: got {exc.key.get_name()} "
            f"{exc.key.fingerprint}, expected {exc.expected_key.fingerprint} from {known_hosts}. "
            "Refusing to connect; if the device was reinstalled, remove the old line and trust the new key."
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise SSHError(f"{ep.name}: unknown host key for {ep.address} (not in {known_hosts}); "
                           + _trust_hint(ep, known_hosts)) from None
        raise SSHError(f"{ep.name}: SSH to {ep.user}@{ep.address} failed: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SSHError(f"{ep.name}: cannot reach {ep.address}: {exc}") from None
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
