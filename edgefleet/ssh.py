"""The one place that opens SSH connections: Fabric, with host keys always verified."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

from .inventory import Target

__all__ = ["connect", "Endpoint", "SSHError", "http_over_ssh", "http_json_over_ssh", "openssh_argv"]


# paramiko logs a refused channel (service not listening yet) as an ERROR before raising it;
# we handle the exception, so the log line is only noise.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


class SSHError(Exception):
    """A target could not be reached or did not prove who it is."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in, and which host keys to trust.

    `port`, `user`, `ssh_key` and `known_hosts` may be None: then ~/.ssh/config decides
    (Port, User, IdentityFile, UserKnownHostsFile, ProxyJump), else OpenSSH's defaults.
    """

    name: str
    host: str
    port: int | None
    user: str | None
    ssh_key: Path | None
    known_hosts: Path | None

    @classmethod
    def of(cls, target: Target) -> "Endpoint":
        return cls(target.name, target.host, target.port, target.user, target.ssh_key, target.known_hosts)


def _address(conn: Connection) -> str:
    return conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"


def _trust_hint(server: str, known_hosts: Path) -> str:
    """Say how to trust `server` ("host" or "[host]:port", as paramiko names it) after checking it."""
    match = re.fullmatch(r"\[(.+)\]:(\d+)", server)
    host, port = (match.group(1), match.group(2)) if match else (server, "22")
    return (
        f"check the key out of band (e.g. on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then add it: ssh-keyscan -p {port} -t ed25519 {host} >> {known_hosts} "
        f"and compare: ssh-keygen -lf {known_hosts}"
    )


def _known_hosts(ep: Endpoint, conn: Connection) -> Path:
    if ep.known_hosts is not None:
        return ep.known_hosts
    configured = conn.ssh_config.get("userknownhostsfile")
    first = configured.split()[0] if configured else "~/.ssh/known_hosts"
    return Path(first).expanduser()


def _verify_host_keys(conn: Connection, known_hosts: Path) -> None:
    """Make `conn` and every ProxyJump hop before it refuse keys not in `known_hosts`."""
    hop = conn
    while isinstance(hop, Connection):  # Fabric builds jump hosts as Connections that auto-add keys
        hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if known_hosts.is_file():
            hop.client.load_host_keys(str(known_hosts))
        hop = hop.gateway


def connect(target: Target | Endpoint, timeout: float = 15.0) -> Connection:
    """Open a Fabric connection to a target, refusing unknown or changed host keys (jump hosts too)."""
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    connect_kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if ep.ssh_key is not None:
        if not ep.ssh_key.is_file():
            raise SSHError(f"{ep.name}: ssh_key {ep.ssh_key} does not exist")
        connect_kwargs.update(key_filename=str(ep.ssh_key), look_for_keys=False, allow_agent=False)
    given = {k: v for k, v in (("port", ep.port), ("user", ep.user)) if v is not None}
    conn = Connection(host=ep.host, connect_timeout=int(timeout), connect_kwargs=connect_kwargs, **given)
    known_hosts = _known_hosts(ep, conn)
    _verify_host_keys(conn, known_hosts)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise SSHError(
            f"{ep.name}: HOST KEY CHANGED for {exc.hostname}: got {exc.key.get_name()} "
            f"{exc.key.fingerprint}, expected {exc.expected_key.fingerprint} from {known_hosts}. "
            "Refusing to connect; if the device was reinstalled, remove the old line and trust the new key."
        ) from None
    except paramiko.SSHException as exc:
        unknown = re.search(r"Server '(.+)' not found in known_hosts", str(exc))
        if unknown:  # the device itself or a jump host before it
            server = unknown.group(1)
            hop = "" if server == _address(conn) else " (a ProxyJump host on the way)"
            raise SSHError(f"{ep.name}: unknown host key for {server}{hop} (not in {known_hosts}); "
                           + _trust_hint(server, known_hosts)) from None
        raise SSHError(f"{ep.name}: SSH to {conn.user}@{_address(conn)} failed: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SSHError(f"{ep.name}: cannot reach {_address(conn)}: {exc}") from None
    return conn


def openssh_argv(target: Target | Endpoint, timeout: float = 15.0) -> list[str] | None:
    """Return the OpenSSH client argv (up to and including the host) for bulk transfers, or None.

    The same trust as `connect`: host keys only from the target's known_hosts (or ~/.ssh/config's),
    never added; the target's key only. OpenSSH moves bytes several times faster than paramiko
    and each device's transfer is its own process. None when there is no `ssh` client or
    EDGEFLEET_SSH_TRANSFER=paramiko: then everything goes through `connect`.
    """
    ssh = shutil.which("ssh")
    if ssh is None or os.environ.get("EDGEFLEET_SSH_TRANSFER", "").lower() == "paramiko":
        return None
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    argv = [ssh, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={int(timeout)}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
    if ep.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={ep.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if ep.ssh_key is not None:
        argv += ["-i", str(ep.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    if ep.port is not None:
        argv += ["-p", str(ep.port)]
    if ep.user is not None:
        argv += ["-l", ep.user]
    return [*argv, "--", ep.host]


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


def http_over_ssh(conn: Connection, port: int, path: str, payload: dict | None = None,
                  timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; return status, headers, body.

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
        return response.status, dict(response.getheaders()), response.read()
    finally:
        http.close()


def http_json_over_ssh(conn: Connection, port: int, path: str, payload: dict | None = None,
                       timeout: float = 120.0) -> tuple[int, dict]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; decode the JSON answer.

    A refused connection (service not listening yet) raises ConnectionRefusedError.
    """
    status, _, raw = http_over_ssh(conn, port, path, payload, timeout)
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"error": raw.decode(errors="replace")[:200]}
