"""The one place that opens connections to devices: `connect` returns a `Transport`.

Through the OpenSSH client over a multiplexed master (`openssh`) when there is an `ssh`
client, else (or with EDGEFLEET_SSH_TRANSFER=paramiko) through Fabric (`fabric`, imported only
then). Host keys are always verified, on every hop, and never added.
"""

from __future__ import annotations

import json

from ..inventory import Target
from .base import PUT, STREAM, CommandTimeout, Endpoint, OpenSSHError, SSHError, StreamProcess, Transport
from .openssh import OpenSSHConnection
from .openssh_login import connect_openssh, openssh_argv
from .sshconfig import openssh_client

__all__ = ["connect", "Transport", "StreamProcess", "Endpoint", "SSHError", "OpenSSHError", "CommandTimeout", "STREAM",
           "PUT", "OpenSSHConnection", "openssh_argv", "http_over_ssh", "http_json_over_ssh"]


def connect(target: Target | Endpoint, timeout: float = 15.0) -> Transport:
    """Open a connection to a target, refusing unknown or changed host keys (jump hosts too)."""
    ep = target if isinstance(target, Endpoint) else Endpoint.of(target)
    if openssh_client() is not None:
        return connect_openssh(ep, timeout)
    from .fabric import connect_fabric

    return connect_fabric(ep, timeout)


def http_over_ssh(conn: Transport, port: int, path: str, payload: dict | None = None,
                  timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; return status, headers, body.

    A refused connection (service not listening yet) raises ConnectionRefusedError.
    """
    return conn.request(port, path, payload, timeout)


def http_json_over_ssh(conn: Transport, port: int, path: str, payload: dict | None = None,
                       timeout: float = 120.0) -> tuple[int, dict]:
    """Send one HTTP request to 127.0.0.1:`port` on the device through `conn`; decode the JSON answer
    (always a dict: an answer that is not a JSON object becomes {"error": ...}).

    A refused connection (service not listening yet) raises ConnectionRefusedError.
    """
    status, _, raw = conn.request(port, path, payload, timeout)
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return status, {"error": raw.decode(errors="replace")[:200]}
    if not isinstance(doc, dict):  # device data: the service answers JSON objects, anything else is an error
        return status, {"error": f"{path} answered a JSON {type(doc).__name__}, not an object: {raw[:120]!r}"}
    return status, doc
