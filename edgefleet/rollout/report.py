"""Show and keep a rollout: the on-disk record (build/rollouts/<id>/), a live progress display, a final table."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .plan import FAILED, NOT_REACHED, ROLLBACK_FAILED, ROLLED_BACK, RolloutError, RolloutPlan

__all__ = ["RolloutRecord", "latest_record", "LiveProgress", "print_table", "LastKnown", "summary_line",
           "device_line"]

RECORD = "rollout.json"
JOURNAL = "devices.jsonl"


class RolloutRecord:
    """build/rollouts/<id>/rollout.json, devices.jsonl and logs/<device>.log.

    rollout.json is written from the start with every device "not reached", so a controller that
    dies mid-wave leaves a record that `--resume` reads, then again at each wave and at the end.
    Each device's outcome is appended to devices.jsonl the moment it is known (one line, one
    write): at 2,000 devices, rewriting the whole record per device would be quadratic.
    `latest_record` reads both.
    """

    def __init__(self, rollouts_dir: Path, plan: RolloutPlan, bundle: Path, meta: dict):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.dir = rollouts_dir / stamp
        self.dir.mkdir(parents=True)
        self.log_dir = self.dir / "logs"
        self._lock = threading.Lock()
        self.doc = {
            "rollout": stamp, "record": str(self.dir), "status": "running", "bundle": str(bundle),
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "finished": None,
            "seconds": None, **meta,
            "plan": {"waves": [list(w) for w in plan.waves], "max_fail": plan.max_fail,
                     "parallel": plan.parallel, "canary_wave": plan.canary_wave},
            "order": list(plan.targets),
            "devices": {n: {"target": n, "wave": i, "result": "not reached"}
                        for i, w in enumerate(plan.waves, 1) for n in w},
        }
        self.write()

    def device(self, outcome) -> None:
        """Record one device's outcome (appended to devices.jsonl now, in rollout.json at the next write)."""
        entry = {**outcome.as_dict(), "log": str(self.log_dir / f"{outcome.target}.log")}
        line = (json.dumps(entry) + "\n").encode()
        with self._lock:
            self.doc["devices"][outcome.target] = entry
            fd = os.open(self.dir / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def checkpoint(self) -> None:
        """Rewrite rollout.json with every outcome so far (a wave boundary)."""
        with self._lock:
            self.write()

    def finish(self, stopped: bool, seconds: float, counts: dict[str, int]) -> dict:
        failed = any(counts.get(r) for r in (FAILED, ROLLED_BACK, ROLLBACK_FAILED))
        with self._lock:
            self.doc.update(status="stopped" if stopped else "failed" if failed else "completed",
                            seconds=round(seconds, 2), counts=counts,
                            finished=datetime.now(UTC).isoformat(timespec="seconds"))
            self.write()
        return self.doc

    def write(self) -> None:
        tmp = self.dir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.dir / RECORD)


def latest_record(rollouts_dir: Path) -> dict:
    """Return the newest rollout record under `rollouts_dir`, with the outcomes its journal has."""
    records = sorted(rollouts_dir.glob(f"*/{RECORD}")) if rollouts_dir.is_dir() else []
    if not records:
        raise RolloutError(f"no rollout recorded under {rollouts_dir}; nothing to resume")
    return latest_record_of(records[-1])


def latest_record_of(path: Path) -> dict:
    """Return the rollout record at `path` (its rollout.json), with the outcomes its journal has."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise RolloutError(f"{path}: not a rollout record: {exc}") from None
    journal = path.parent / JOURNAL
    if doc.get("status") == "running" and journal.is_file():  # the controller stopped before its last write
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short when the controller was killed: that device is not reached
                continue
            if entry.get("target") in doc.get("devices", {}):
                doc["devices"][entry["target"]] = entry
    return doc


class LastKnown:
    """The release each device was last known on, from the newest rollout records (read once, when first asked)."""

    def __init__(self, rollouts_dir: Path, records: int = 20):
        self.rollouts_dir, self.records = rollouts_dir, records
        self._known: dict[str, str] | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str | None:
        with self._lock:
            if self._known is None:
                self._known = self._read()
        return self._known.get(name)

    def _read(self) -> dict[str, str]:
        known: dict[str, str] = {}
        paths = sorted(self.rollouts_dir.glob(f"*/{RECORD}"), reverse=True)[:self.records] \
            if self.rollouts_dir.is_dir() else []
        for path in paths:
            try:
                devices = latest_record_of(path).get("devices", {})
            except (OSError, ValueError, RolloutError):
                continue
            for name, d in devices.items():
                release = d.get("active") or (d.get("previous") if d.get("result") == NOT_REACHED else None)
                if isinstance(release, str) and name not in known:
                    known[name] = release
        return known


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _latency(d: dict) -> str:
    """p95 ms, marked when it was measured but not judged: (emulated) or (throttled)."""
    text = _fmt(d.get("latency_ms"), ".1f")
    notes = d.get("gate_notes") or []
    mark = next((w for w in ("emulated", "throttled") if any(n.startswith(w) for n in notes)), None)
    return f"{text} ({mark})" if mark and text != "-" else text


def _detail(d: dict) -> str:
    """The failure's first line, and the log's last line when there is one (where the failing line is)."""
    error = (d.get("error") or "").strip()
    if not error:
        # what the device passed with but not as its board asked: a provider fallback, another variant
        return "; ".join(d.get("warnings") or [])[:160]
    head, _, journal = error.partition("; journal:")
    last = next((line.strip() for line in reversed(journal.splitlines()) if line.strip()), "")
    return head.splitlines()[0][:160] + (f" | {last[-160:]}" if last else "")


def _releases(d: dict) -> str:
    """previous -> target: '(none)' only when the device said it had no release, '?' when nothing is known."""
    if not d.get("new"):
        return "-"
    previous = d.get("previous") or ("?" if d.get("previous_from", "device") == "unknown" else "(none)")
    tuned = f", tuned: {d['tuned']}" if d.get("tuned") else ""
    variant = f" ({d['variant']}{tuned})" if d.get("variant") else ""
    return f"{previous} -> {d['new']}{variant}"


def _where(d: dict) -> str:
    return d.get("where") or ("on " + d["active"] if d.get("active") else d.get("result", ""))


def _outcome(d: dict) -> str:
    """The result a summary counts: a failed device that went back by itself is 'failed (rolled back)'."""
    result = d.get("result", NOT_REACHED)
    if result == FAILED and (d.get("where") or "").startswith("rolled back"):
        return "failed (rolled back)"
    if result == ROLLED_BACK:
        return "rolled back (its wave failed)"
    return result


_ORDER = ("updated", "repaired", "unchanged", "failed", "failed (rolled back)", "rolled back (its wave failed)",
          "rollback failed", "not reached")


def summary_line(doc: dict) -> str:
    """Return '3 updated, 1 unchanged, 1 failed (rolled back)': every device counted once, by what happened."""
    counts: dict[str, int] = {}
    for name in doc["order"]:
        kind = _outcome(doc["devices"][name])
        counts[kind] = counts.get(kind, 0) + 1
    kinds = sorted(counts, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER))
    return ", ".join(f"{counts[k]} {k}" for k in kinds)


def device_line(d: dict) -> str:
    """One plain line for a device that finished (off a terminal, as it finishes)."""
    detail = _detail(d)
    return (f"wave {d['wave']} {d['target']}: {d.get('result')}: {_releases(d)}; {_where(d)}"
            + (f" ({d['seconds']:.1f} s)" if d.get("seconds") else "") + (f": {detail}" if detail else ""))


def print_table(doc: dict, console=None) -> None:
    """Print the final table: device, previous -> target release, where it is now, result, latency, time."""
    from rich.console import Console
    from rich.table import Table

    styles = {"updated": "green", "repaired": "green", "unchanged": "green", "failed": "bold red",
              "rolled back": "yellow", "rollback failed": "bold red", "not reached": "dim"}
    bundles = sorted({d["bundle"] for d in doc["devices"].values() if d.get("bundle")})
    title = f"rollout {doc['rollout']}: {doc['status']}" + (f" (bundle {', '.join(bundles)})" if bundles else "")
    table = Table(title=title)
    rows = []
    for name in doc["order"]:
        d = doc["devices"][name]
        result = d["result"]
        rows.append((str(d["wave"]), name, _releases(d), f"[{styles.get(result, '')}]{result}[/]", _where(d),
                     _latency(d), _fmt(d.get("temperature_c"), ".1f"),
                     _fmt(d.get("seconds") if result != NOT_REACHED else None, ".1f")))
    columns = ("wave", "device", "previous -> target", "result", "now", "p95 ms", "°C", "s")
    for i, column in enumerate(columns):
        # names and release ids are never cut: their columns are as wide as their longest cell
        widest = max([len(r[i]) for r in rows] + [1]) if column in ("device", "previous -> target") else None
        table.add_column(column, justify="right" if column in ("wave", "p95 ms", "°C", "s") else "left",
                         no_wrap=column != "now", min_width=widest, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for name in doc["order"]:  # each failure on lines of its own: the reason and the failing line, uncut
        detail = _detail(doc["devices"][name])
        if detail:
            console.print(f"{name}: {detail}", soft_wrap=True, markup=False, highlight=False)
    console.print("; ".join([summary_line(doc), f"record {doc['record']}"]
                            + ([f"took {doc['seconds']:.1f} s"] if doc.get("seconds") else [])), soft_wrap=True)


class LiveProgress:
    """One progress line per wave with counts (rich, on stderr); use as `on_event` of `run_rollout`."""

    def __init__(self, plan: RolloutPlan, enabled: bool = True, plain=None):
        """`plain`: off a terminal, where one line per device as it finishes and per wave is written (a
        print-like callable), instead of the live display."""
        self.enabled = enabled
        self.plain: Callable[[str], None] | None = None if enabled else plain
        self.waves = {i: len(w) for i, w in enumerate(plan.waves, 1)}
        self.tasks: dict[int, Any] = {}  # wave -> rich's TaskID
        self.counts: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()
        if not enabled:  # no display: rich is not even imported (a noticeable part of a no-op re-run)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
        for i, wave in enumerate(plan.waves, 1):
            kind = "canary" if i == 1 and plan.canary_wave else "batch"
            self.tasks[i] = self.progress.add_task(f"wave {i} ({kind})", total=len(wave), counts="waiting", start=False)
            self.counts[i] = {}

    def __enter__(self):
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.enabled else False

    def __call__(self, kind: str, wave: int, payload) -> None:
        if not self.enabled:
            if self.plain is not None:
                self._plain(self.plain, kind, wave, payload)
            return
        with self._lock:
            task = self.tasks[wave]
            if kind == "wave":
                self.progress.start_task(task)
                self.progress.update(task, counts="running")
            elif kind == "device":
                c = self.counts[wave]
                c[payload.result] = c.get(payload.result, 0) + 1
                self.progress.update(task, advance=1, counts=", ".join(f"{n} {r}" for r, n in sorted(c.items())))
            elif kind == "rollback" and payload:
                self.progress.console.print(f"wave {wave} failed: rolling back {', '.join(payload)}")
            elif kind == "stopped":
                self.progress.console.print(f"wave {wave}: {payload} device(s) failed, over the limit; stopping")

    def _plain(self, say: Callable[[str], None], kind: str, wave: int, payload) -> None:
        with self._lock:
            if kind == "wave":
                self.counts[wave] = {}
                say(f"wave {wave}: {len(payload)} device(s): {', '.join(payload)}")
            elif kind in ("device", "reverted"):
                d = payload.as_dict()
                say(device_line(d))
                if kind == "device":
                    c = self.counts.setdefault(wave, {})
                    c[d["result"]] = c.get(d["result"], 0) + 1
                    if sum(c.values()) == self.waves[wave]:
                        say(f"wave {wave} done: " + ", ".join(f"{n} {r}" for r, n in sorted(c.items())))
            elif kind == "rollback" and payload:
                say(f"wave {wave} failed: rolling back {', '.join(payload)}")
            elif kind == "stopped":
                say(f"wave {wave}: {payload} device(s) failed, over the limit; stopping")
