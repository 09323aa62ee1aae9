"""The Fabric/paramiko transport: used where no `ssh` client is installed, or with
EDGEFLEET_SSH_TRANSFER=paramiko. Host keys verified on every hop, never added."""

from __future__ import annotations

import http.client
import json
import logging
import re
from pathlib import Path

from fabric import Config, Connection
from fabric.runners import Remote

from .base import OUTPUT_CAP, PUT, RESPONSE_CAP, Endpoint, SSHError, trust_hint

__all__ = ["FabricConnection", "connect_fabric"]

# paramiko logs a refused channel (service not listening yet) as an ERROR before raising it;
# we handle the exception, so the log line is only noise
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


class CappedRemote(Remote):
    """Fabric's remote runner keeping only the last OUTPUT_CAP characters of each stream (as the
    OpenSSH transport keeps bytes): a device that floods its output cannot flood our memory.

    Invoke's runner appends every chunk to one list it joins at the end, with no limit; these two
    handlers are its documented hooks for reading a stream, so the cap lives here.
    """

    def handle_stdout(self, buffer_, hide, output) -> None:
        self._keep_tail(buffer_, hide, output, self.read_proc_stdout)

    def handle_stderr(self, buffer_, hide, output) -> None:
        self._keep_tail(buffer_, hide, output, self.read_proc_stderr)

    def _keep_tail(self, buffer_, hide, output, reader) -> None:
        kept: list[str] = []
        size = dropped = 0
        for data in self.read_proc_output(reader):
            if not hide:
                self.write_our_output(stream=output, string=data)
            kept.append(data)
            size += len(data)
            if size > 2 * OUTPUT_CAP:  # trimmed in bulk: amortized, never a copy per chunk
                tail = "".join(kept)[-OUTPUT_CAP:]
                dropped += size - len(tail)
                kept, size = [tail], len(tail)
            if self.watchers:
                self.respond(kept)
        text = "".join(kept)
        if len(text) > OUTPUT_CAP:
            dropped += len(text) - OUTPUT_CAP
            text = text[-OUTPUT_CAP:]
        if dropped:
            text = f"[edgefleet: the first {dropped} characters of this output were dropped]\n" + text
        buffer_[:] = [text]


class FabricConnection(Connection):
    """Fabric's Connection as a `Transport`: commands, SFTP puts, HTTP over a direct-tcpip channel."""

    capabilities = frozenset({PUT})

    def __init__(self, *args, name: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name or self.host

    def stream(self, command: str, stderr):
        raise NotImplementedError("FabricConnection has no STREAM capability: use put()")

    def request(self, port: int, path: str, payload: dict | None = None,
                timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        """Send one HTTP request to 127.0.0.1:`port` on the device over a direct-tcpip channel."""
        import paramiko

        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"{self.host}:{self.port}: SSH connection is closed")
        link = _ChannelHTTPConnection(transport, "127.0.0.1", port, timeout)
        try:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", "Connection": "close"}
            try:
                link.request("GET" if body is None else "POST", path, body=body, headers=headers)
            except paramiko.ChannelException as exc:
                raise ConnectionRefusedError(f"127.0.0.1:{port} on the device: {exc}") from None
            response = link.getresponse()
            return response.status, dict(response.getheaders()), response.read(RESPONSE_CAP)
        finally:
            link.close()


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


def _address(conn: Connection) -> str:
    return conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"


def _known_hosts(ep: Endpoint, conn: Connection) -> Path:
    if ep.known_hosts is not None:
        return ep.known_hosts
    configured = conn.ssh_config.get("userknownhostsfile")
    first = configured.split()[0] if configured else "~/.ssh/known_hosts"
    return Path(first).expanduser()


def _verify_host_keys(conn: Connection, known_hosts: Path) -> None:
    """Make `conn` and every ProxyJump hop before it refuse keys not in `known_hosts`."""
    import paramiko

    hop = conn
    while isinstance(hop, Connection):  # Fabric builds jump hosts as Connections that auto-add keys
        hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if known_hosts.is_file():
            hop.client.load_host_keys(str(known_hosts))
        hop = hop.gateway


def connect_fabric(ep: Endpoint, timeout: float) -> FabricConnection:
    """Open a Fabric connection to `ep`, refusing unknown or changed host keys (jump hosts too)."""
    import paramiko

    connect_kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if ep.ssh_key is not None:
        if not ep.ssh_key.is_file():
            raise SSHError(f"{ep.name}: ssh_key {ep.ssh_key} does not exist")
        connect_kwargs.update(key_filename=str(ep.ssh_key), look_for_keys=False, allow_agent=False)
    given = {k: v for k, v in (("port", ep.port), ("user", ep.user)) if v is not None}
    conn = FabricConnection(host=ep.host, name=ep.name, connect_timeout=int(timeout), connect_kwargs=connect_kwargs,
                            config=Config(overrides={"runners": {"remote": CappedRemote}}), **given)
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
                           + trust_hint(server, known_hosts)) from None
        raise SSHError(f"{ep.name}: SSH to {conn.user}@{_address(conn)} failed: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SSHError(f"{ep.name}: cannot reach {_address(conn)}: {exc}") from None
    return conn
