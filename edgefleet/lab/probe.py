"""Ask a lab device over SSH whether it is up (strict host key check, no auto-add)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.transport import Endpoint, SSHError, connect

__all__ = ["READY_STATES", "system_state"]

READY_STATES = ("running", "degraded")


def system_state(port: int, key: Path, known_hosts: Path, timeout: float = 10.0, user: str = "root") -> str:
    """Return `systemctl is-system-running` from the device, or why it could not be asked."""
    endpoint = Endpoint(f"lab device on port {port}", "127.0.0.1", port, user, key, known_hosts)
    try:
        conn = connect(endpoint, timeout=timeout)
    except SSHError as exc:
        return f"no ssh ({exc})"
    try:
        result = conn.run("systemctl is-system-running", hide=True, warn=True, in_stream=False,
                          timeout=timeout * 3)
        return result.stdout.strip() or "unknown"
    except Exception as exc:  # a half-booted device may drop the channel; keep polling
        return f"no answer ({type(exc).__name__}: {exc})"
    finally:
        conn.close()
