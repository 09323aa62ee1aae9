"""Say where each resolved value of a target came from: board, group, device (file:line) or default."""

from __future__ import annotations

import json
from typing import Any

from .inventory import Target

__all__ = ["explain_target"]


def _leaves(data: Any, prefix: tuple[str, ...] = ()):
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, prefix + (str(key),))
    else:
        yield prefix, data


def explain_target(target: Target) -> list[str]:
    """Return one line per resolved setting: key = value  <- where it was set."""
    lines = [f"{target.name}: board {target.board.name} ({target.board.doc.path if target.board.doc else '?'}), "
             f"groups {', '.join(target.groups) or '(none)'}, device in {target.source}"]
    for key, value in _leaves(target.settings.model_dump()):
        origin = None
        for n in range(len(key), 0, -1):
            if key[:n] in target.origins:
                origin = target.origins[key[:n]]
                break
        lines.append(f"  {'.'.join(key)} = {json.dumps(value)}  <- {origin or 'default'}")
    s = target.settings
    if s.runtime.affinity is None:
        lines.append(f"  (affinity) = {json.dumps(s.affinity)}  <- derived from big_cores")
    if s.runtime.threads is None:
        lines.append(f"  (threads) = {json.dumps(s.threads)}  <- derived: one per affinity core")
    return lines
