"""What every way of talking to a device offers (`Transport`), and the errors it raises.

Two implementations: `openssh.OpenSSHConnection` (the OpenSSH client over a multiplexed
master; the default) and `fabric.FabricConnection` (Fabric/paramiko, where no `ssh` client is
installed or EDGEFLEET_SSH_TRANSFER=paramiko). Callers use only this protocol: what a transport
can do beyond running commands it declares in `capabilities`, never by its class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from invoke.runners import Result

from ..errors import EdgefleetError
from ..inventory import Target

__all__ = ["Transport", "StreamProcess", "Endpoint", "SSHError", "OpenSSHError", "CommandTimeout", "STREAM", "PUT",
           "trust_hint", "TailBuffer", "OUTPUT_CAP", "RESPONSE_CAP"]

# what the controller keeps of one stream of a device command's output: its tail (the failing
# line is at the end); a device cannot make the controller buffer more than twice this
OUTPUT_CAP = 8 * 2**20
RESPONSE_CAP = 8 * 2**20  # the most of one HTTP answer from the device that is read

STREAM = "stream"  # `stream()`: bytes written into a remote command's stdin (a tar upload)
PUT = "put"  # `put()`: a file written to a path on the device (SFTP)


class SSHError(EdgefleetError):
    """A target could not be reached or did not prove who it is."""


class OpenSSHError(EdgefleetError):
    """The OpenSSH client could not reach or trust the device (`connect` rewords it as SSHError)."""


class CommandTimeout(OpenSSHError):
    """A device command did not end within its timeout (the message says which and how long)."""


class TailBuffer:
    """Collect bytes keeping only the last `cap` (amortized: trimmed once it holds twice that)."""

    def __init__(self, cap: int = OUTPUT_CAP):
        self.cap, self.data, self.dropped = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.cap:
            cut = len(self.data) - self.cap
            del self.data[:cut]
            self.dropped += cut

    def value(self) -> bytes:
        """Return what was kept; when bytes were dropped, a first line says how many."""
        if len(self.data) > self.cap:
            self.dropped += len(self.data) - self.cap
            del self.data[:len(self.data) - self.cap]
        if not self.dropped:
            return bytes(self.data)
        return f"[edgefleet: the first {self.dropped} bytes of this output were dropped]\n".encode() + bytes(self.data)


class StreamProcess(Protocol):
    """A remote command reading what we write into `stdin`; `wait()` returns its exit status."""

    stdin: Any

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Transport(Protocol):
    """One device's connection: run commands, send bytes, reach a port on its loopback, close."""

    name: str
    host: str
    capabilities: frozenset[str]

    @property
    def user(self) -> str: ...

    @property
    def port(self) -> int: ...

    def run(self, command: str, hide: Any = None, warn: bool = False, in_stream: Any = None,
            timeout: float | None = None) -> Result:
        """Run `command` (`in_stream`: its input; False for none); a non-zero exit raises unless `warn`."""
        ...

    def stream(self, command: str, stderr: IO[bytes]) -> StreamProcess:
        """Start `command` reading our bytes (with the STREAM capability)."""
        ...

    def put(self, local: Any, remote: str) -> None:
        """Write `local` (a path or a binary file object) to `remote` (with the PUT capability)."""
        ...

    def request(self, port: int, path: str, payload: dict | None, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """Send one HTTP request to 127.0.0.1:`port` on the device; a port nothing listens on raises
        ConnectionRefusedError."""
        ...

    def close(self) -> None: ...


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


def trust_hint(server: str, known_hosts: Path) -> str:
    """Say how to trust `server` ("host" or "[host]:port") after checking it."""
    match = re.fullmatch(r"\[(.+)\]:(\d+)", server)
    host, port = (match.group(1), match.group(2)) if match else (server, "22")
    return (
        f"check the key out of band (e.g. on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then add it: ssh-keyscan -p {port} -t ed25519 {host} >> {known_hosts} "
        f"and compare: ssh-keygen -lf {known_hosts}"
    )
