"""Shorten a failure's text for a report without losing what matters: its first line (what failed)
and its tail (a log's last lines, where the failing line is), never its head alone."""

from __future__ import annotations

__all__ = ["keep_tail"]


def keep_tail(text: str, limit: int = 500) -> str:
    """Return `text` within `limit` characters: the first line, then as many whole last lines as fit."""
    text = text.strip()
    if len(text) <= limit:
        return text
    first, _, rest = text.partition("\n")
    first = first[:limit // 2]
    room = limit - len(first) - 5
    kept: list[str] = []
    for line in reversed(rest.splitlines()):
        if len(line) + 1 > room:
            if not kept:  # one very long last line: its end
                kept.append("…" + line[-(room - 1):])
            break
        kept.append(line)
        room -= len(line) + 1
    return first + "\n…\n" + "\n".join(reversed(kept)) if kept else first
