"""Record a deploy's outcome in the device's state.json (history; `current` = last that passed its gate)."""

from __future__ import annotations

import json
from shlex import quote

from .device import Device

__all__ = ["record_state"]

def record_state(dev: Device, entry: dict, keep: int = 50) -> None:
    """Append `entry` to the device's state.json history (atomic replace)."""
    path = dev.path("state.json")
    res = dev.run(f"cat {quote(path)} 2>/dev/null || true", "read state.json", privileged=False, warn=True)
    try:
        state = json.loads(res.stdout or "{}")
    except ValueError:
        state = {}
    history = (state.get("history") or [])[-(keep - 1):] + [entry]
    # "current" is the last release that passed its gate: an unhealthy one never becomes it
    state = {"current": entry.get("active") if entry.get("healthy") else state.get("current"), "history": history}
    tmp = dev.path(".state.json.tmp")
    # written beside it under the root (never in a shared directory), created anew (noclobber:
    # O_EXCL, so no link planted there is followed), then renamed into place
    dev.run(f"rm -f {quote(tmp)} && set -C && cat > {quote(tmp)} && chmod 0644 {quote(tmp)} && "
            f"mv -f {quote(tmp)} {quote(path)}",
            "write state.json", text=json.dumps(state, indent=2) + "\n")
