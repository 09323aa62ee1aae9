"""The one place that opens SSH connections: Fabric, with host keys always verified."""

from __future__ import annotations

import http.client
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgefleetError
from .inventory import Target
from .openssh import ForwardedHTTPConnection, OpenSSHConnection, OpenSSHError, openssh_client

__all__ = ["connect", "Endpoint", "SSHError", "http_over_ssh", "http_json_over_ssh", "openssh_argv",
           "OpenSSHConnection"]


# paramiko logs a refused channel (service not listening yet) as an ERROR before raising it;
# we handle the exception, so the log line is only noise. (paramiko and Fabric are imported only
# when the Fabric transport is used: ~0.15 s of every start-up otherwise.)
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


class SSHError(EdgefleetError):
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
    def of(cls, target: Target) -> Endpoint:
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
    import paramiko
    from fabric import Connection

    hop = conn
    while isinstance(hop, Connection):  # Fabric builds jump hosts as Connections that auto-add keys
        hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if known_hosts.is_file():
            hop.client.load_host_keys(str(known_hosts))
        hop = hop.gateway


def connect(target: Target | Endpoint, timeout: float = 15.0) -> Connection | OpenSSHConnection:
    """Open a connection to a target, refusing unknown or changed host keys (jump hosts too).

    Through the OpenSSH client over a multiplexed master (`edgefleet.openssh`) when there is an
    `ssh` client, else (or with EDGEFLEET_SSH_TRANSFER=paramiko) through Fabric. Both are Invoke
    Contexts with `run`, `put`, `host`, `port`, `user` and `close`.
    """
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    if openssh_client() is not None:
        return _connect_openssh(ep, timeout)
    import paramiko
    from fabric import Connection

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


def _connect_openssh(ep: Endpoint, timeout: float) -> OpenSSHConnection:
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
                f"{got.group(1) if got else 'another key'}, not the one in {where.group(1) if where else conn.known_hosts}. "
                "Refusing to connect; if the device was reinstalled, remove the old line and trust the new key.")
    unknown = re.search(r"No \S+ host key is known for (\S+) and", text)
    if unknown or "Host key verification failed" in text:
        server = unknown.group(1) if unknown else conn.address
        hop = "" if server == conn.address else " (a ProxyJump host on the way)"
        return (f"{ep.name}: unknown host key for {server}{hop} (not in {conn.known_hosts}); "
                + _trust_hint(server, conn.known_hosts))
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


class _ChannelHTTPConnection(http.client.HTTPConnection):
    """HTTP over an SSH direct-tcpip channel: no local port, nothing left listening."""

    def __init__(self, transport, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._transport = transport

    def connect(self) -> None:
        channel = self._transport.open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0),
                                               timeout=self.timeout)
        channel.settimeout(self.timeout)
        self.sock = channel


def http_over_ssh(conn: Connection | OpenSSHConnection, port: int, path: str, payload: dict | None = None,
                  timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; return status, headers, body.

    A refused connection (service not listening yet) raises ConnectionRefusedError.
    """
    if isinstance(conn, OpenSSHConnection):
        return _http_over_openssh(conn, port, path, payload, timeout)
    import paramiko

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


def _http_over_openssh(conn: OpenSSHConnection, port: int, path: str, payload: dict | None,
                       timeout: float) -> tuple[int, dict[str, str], bytes]:
    link = ForwardedHTTPConnection(conn, port, timeout)
    body = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Connection": "close"}
    try:
        link.request("GET" if body is None else "POST", path, body=body, headers=headers)
        response = link.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (OSError, http.client.HTTPException) as exc:
        refused = link.refused()
        if refused is not None:  # not listening (yet): what paramiko's refused channel says too
            raise ConnectionRefusedError(f"127.0.0.1:{port} on the device: {refused}") from None
        if isinstance(exc, OSError):
            raise
        raise ConnectionResetError(f"127.0.0.1:{port} on the device: {exc or type(exc).__name__}") from None
    finally:
        link.release()


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
