"""state.json, the device's deploy history, read as untrusted data into a typed record.

A deploy keeps the last sound version as `state.json.bak`. A state.json that does not parse,
or parses to the wrong shape, is never treated as empty: it is recovered from the backup when
that is sound, kept aside as `state.json.broken-<time>` either way, and the history counts as
unsound until a deploy has written a sound one again (prune waits for that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["DeviceState", "StateRead", "parse_state", "parse_state_read", "STATE_MARKS", "state_read_command"]

STATE_MARKS = ("--state--", "--backup--", "--end--")
_ENTRY_STR_KEYS = ("time", "release", "previous", "reason", "active")


class StateShapeError(ValueError):
    """state.json parsed, but not into what a deploy writes."""


@dataclass(frozen=True)
class DeviceState:
    """The history (entries as record_state writes them, each checked) and the last committed release."""

    current: str | None = None
    history: tuple[dict, ...] = ()


@dataclass(frozen=True)
class StateRead:
    """What reading state.json (and its backup) found: the state to build on, and whether it is sound."""

    state: DeviceState = field(default_factory=DeviceState)
    sound: bool = True  # the history is the device's whole history (prune may trust it)
    problem: str = ""  # what was wrong and what was done about it, for the deploy's log
    broken: bool = False  # state.json itself is unreadable (keep it aside before it is replaced)


def parse_state(text: str) -> DeviceState:
    """Parse state.json's text; raise StateShapeError (a ValueError) naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateShapeError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise StateShapeError(f"a JSON {type(doc).__name__}, not an object")
    current, history = doc.get("current"), doc.get("history", [])
    if current is not None and not isinstance(current, str):
        raise StateShapeError(f"current is {current!r}, not a release id")
    if not isinstance(history, list):
        raise StateShapeError(f"history is a JSON {type(history).__name__}, not a list")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise StateShapeError(f"history[{i}] is {entry!r:.60}, not an object")
        for key in _ENTRY_STR_KEYS:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise StateShapeError(f"history[{i}].{key} is {entry[key]!r:.60}, not a string")
        if "healthy" in entry and not isinstance(entry["healthy"], bool):
            raise StateShapeError(f"history[{i}].healthy is {entry['healthy']!r:.60}, not true/false")
    return DeviceState(current, tuple(history))


def state_read_command(path: str) -> str:
    """Return sh printing state.json and its backup between marks (a missing file prints nothing)."""
    from shlex import quote

    return (f"echo {STATE_MARKS[0]}; cat {quote(path)} 2>/dev/null; echo; echo {STATE_MARKS[1]}; "
            f"cat {quote(path + '.bak')} 2>/dev/null; echo; echo {STATE_MARKS[2]}")


def parse_state_read(output: str, other_releases: bool = True) -> StateRead:
    """Judge the output of `state_read_command`.

    `other_releases`: releases besides the one being recorded are on the device; then a missing
    state.json means a lost history (unsound), not a first deploy.
    """
    _, _, rest = output.partition(STATE_MARKS[0] + "\n")
    main, _, rest = rest.partition("\n" + STATE_MARKS[1] + "\n")
    backup, _, _ = rest.partition("\n" + STATE_MARKS[2])
    if not main.strip():
        if backup.strip():
            return _from_backup(backup, "state.json is missing")
        if other_releases:
            return StateRead(sound=False, problem="state.json is missing while releases are on the device: "
                                                  "history starts anew, prune waits")
        return StateRead()
    try:
        return StateRead(parse_state(main))
    except StateShapeError as exc:
        return _from_backup(backup, f"state.json is unreadable ({exc})", broken=True)


def _from_backup(backup: str, why: str, broken: bool = False) -> StateRead:
    try:
        state = parse_state(backup)
    except StateShapeError as exc:
        detail = "no backup" if not backup.strip() else f"its backup too ({exc})"
        return StateRead(sound=False, broken=broken,
                         problem=f"{why}, {detail}: history starts anew, the old file is kept aside, prune waits")
    return StateRead(state, sound=False, broken=broken,
                     problem=f"{why}: history recovered from state.json.bak ({len(state.history)} entries), "
                             f"prune waits for a sound history")
