"""Ask a lab device over SSH whether it is up (strict host key check, no auto-add).

This is the lab's readiness probe only; deploys go through edgefleet.ssh.
"""

from __future__ import annotations

from pathlib import Path

import paramiko

__all__ = ["READY_STATES", "system_state"]

READY_STATES = ("running", "degraded")


def system_state(port: int, key: Path, known_hosts: Path, timeout: float = 10.0) -> str:
    """Return `systemctl is-system-running` from the device, or why it could not be asked."""
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(known_hosts))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        ssh.connect(
            "127.0.0.1", port=port, username="root", key_filename=str(key),
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            allow_agent=False, look_for_keys=False,
        )
        _, stdout, _ = ssh.exec_command("systemctl is-system-running", timeout=timeout * 3)
        return stdout.read().decode(errors="replace").strip() or "unknown"
    except (OSError, paramiko.SSHException, EOFError) as exc:
        return f"no ssh ({type(exc).__name__}: {exc})"
    finally:
        ssh.close()
