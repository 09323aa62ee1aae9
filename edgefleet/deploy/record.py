"""Record a deploy's outcome in the device's state.json (history; `current` = last that passed its gate).

Written atomically (a new file renamed into place) and copied to state.json.bak the same way;
an unreadable state.json is recovered from that backup and kept aside, never silently
replaced (see state.py).
"""

from __future__ import annotations

import json
from shlex import quote

from .device import Device
from .state import STATE_MARKS, StateRead, parse_state_read, state_read_command

__all__ = ["record_state", "read_state"]


def read_state(dev: Device, recording: str | None = None) -> StateRead:
    """Read and judge the device's state.json (and backup); `recording`: the release about to be recorded."""
    command = (state_read_command(dev.path("state.json")) + "; "
               f'for r in {quote(dev.path("releases"))}/*; do [ -e "$r" ] && echo "${{r##*/}}"; done; true')
    out = dev.run(command, "read state.json", privileged=False, warn=True).stdout or ""
    releases = set(out.rpartition(STATE_MARKS[2])[2].split())
    return parse_state_read(out, other_releases=bool(releases - {recording}))


def record_state(dev: Device, entry: dict, keep: int = 50, log=print) -> bool:
    """Append `entry` to the device's state.json history (atomic replace, backup kept).

    Return whether the history was sound (False: it was recovered or started anew, and said so).
    """
    read = read_state(dev, entry.get("active"))
    if read.problem:
        log(f"  {dev.target.name}: {read.problem}")
    state = read.state
    history = list(state.history)[-(keep - 1):] + [entry]
    # "current" is the last release that passed its gate: an unhealthy one never becomes it
    doc = {"current": entry.get("active") if entry.get("healthy") else state.current, "history": history}
    path, tmp, bak = dev.path("state.json"), dev.path(".state.json.tmp"), dev.path("state.json.bak")
    steps = []
    if read.broken:  # kept for whoever looks into it; never overwritten
        steps.append(f"mv -f {quote(path)} {quote(path)}.broken-$(date +%Y%m%dT%H%M%S)-$$")
    # written beside it under the root (never in a shared directory), created anew (noclobber:
    # O_EXCL, so no link planted there is followed), then renamed into place; then the same
    # bytes become the backup the same way (a deploy killed in between leaves it one entry behind)
    tmp_bak = quote(tmp + ".bak")
    steps.append(f"rm -f {quote(tmp)} {tmp_bak} && set -C && cat > {quote(tmp)} && chmod 0644 {quote(tmp)} && "
                 f"cp {quote(tmp)} {tmp_bak} && mv -f {quote(tmp)} {quote(path)} && mv -f {tmp_bak} {quote(bak)}")
    dev.run(" && ".join(f"{{ {s}; }}" for s in steps), "write state.json", text=json.dumps(doc, indent=2) + "\n")
    return read.sound
