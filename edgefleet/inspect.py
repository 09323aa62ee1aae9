"""Look at devices over SSH without changing them: status with drift, and diffs of rendered files."""

from __future__ import annotations

from .deploy import Device, service_call
from .deploy.health import parse_readiness
from .deploy.providers import fallback_warning
from .inventory import Target
from .render import check_rendered, render_target
from .status import (
    TargetStatus,
    find_drift,
    parse_status,
    read_files_command,
    status_command,
    throttling,
    unified_diffs,
)
from .transport import SSHError, connect

__all__ = ["collect_status", "device_diff"]


def collect_status(target: Target) -> TargetStatus:
    """Gather one target's status; an unreachable target is reported, not raised."""
    files = render_target(target)
    try:
        conn = connect(target)
    except SSHError as exc:
        return TargetStatus(target.name, reachable=False, error=str(exc))
    try:
        dev = Device(conn, target)
        state = parse_status(dev.run(status_command(target, files), "read status", privileged=False).stdout)
        result = TargetStatus(
            target.name, reachable=True, release=state.current, committed=state.committed,
            service=f"{state.service_active}/{state.service_enabled}", governors=state.governors,
            temperatures=state.temperatures, throttling=throttling(target, state.temperatures),
            drift=find_drift(target, files, state),
        )
        if state.service_active == "active":
            try:  # healthy as the deploy's gate judges it: the runtime takes inference now
                ready = parse_readiness(*service_call(dev)("/readyz", timeout=10))
                result.healthy, result.ready_detail = ready.serving, ready.reason
                if result.healthy:
                    result.warnings = _warnings(dev)
            except (OSError, ValueError) as exc:
                result.healthy, result.ready_detail = False, f"/readyz: {exc}"
        else:
            result.healthy, result.ready_detail = False, f"service {state.service_active}"
        return result
    finally:
        conn.close()


def _warnings(dev: Device) -> list[str]:
    """Return what the running service reports that deserves a warning (a provider fallback)."""
    try:
        code, info = service_call(dev)("/v1/info", timeout=10)
    except (OSError, ValueError):
        return []
    warning = fallback_warning(info.get("providers")) if code == 200 and isinstance(info, dict) else None
    return [warning] if warning else []


def device_diff(target: Target) -> list[str]:
    """Return unified diffs between the files on the device and freshly rendered ones."""
    files = render_target(target)
    check_rendered(files)
    conn = connect(target)
    try:
        output = Device(conn, target).run(read_files_command(files), "read device files", privileged=True).stdout
    finally:
        conn.close()
    return unified_diffs(files, output)
