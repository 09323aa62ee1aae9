"""Show and keep a rollout: the on-disk record (build/rollouts/<id>/), a live progress display, a final table."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .plan import OK_RESULTS, RolloutError, RolloutPlan

__all__ = ["RolloutRecord", "latest_record", "LiveProgress", "print_table"]

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
        with self._lock:
            self.doc.update(status="stopped" if stopped else "completed", seconds=round(seconds, 2), counts=counts,
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
    try:
        doc = json.loads(records[-1].read_text())
    except ValueError as exc:
        raise RolloutError(f"{records[-1]}: not a rollout record: {exc}") from None
    journal = records[-1].parent / JOURNAL
    if doc.get("status") == "running" and journal.is_file():  # the controller stopped before its last write
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short when the controller was killed: that device is not reached
                continue
            if entry.get("target") in doc.get("devices", {}):
                doc["devices"][entry["target"]] = entry
    return doc


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _latency(d: dict) -> str:
    """p95 ms, marked when it was measured but not judged: (emulated) or (throttled)."""
    text = _fmt(d.get("latency_ms"), ".1f")
    notes = d.get("gate_notes") or []
    mark = next((w for w in ("emulated", "throttled") if any(n.startswith(w) for n in notes)), None)
    return f"{text} ({mark})" if mark and text != "-" else text


def _detail(d: dict) -> str:
    error = (d.get("error") or "").split("; journal:")[0].strip()
    if error:
        return error.splitlines()[0][:160]
    # what the device passed with but not as its board asked: a provider fallback, another variant
    return "; ".join(d.get("warnings") or [])[:160]


def print_table(doc: dict, console=None) -> None:
    """Print the final table: device, old -> new release, result, latency, temperature, time."""
    from rich.console import Console
    from rich.table import Table

    styles = {"updated": "green", "unchanged": "green", "failed": "bold red", "rolled back": "yellow",
              "rollback failed": "bold red", "not reached": "dim"}
    table = Table(title=f"rollout {doc['rollout']}: {doc['status']}")
    for column in ("wave", "device", "old -> new release", "result", "p95 ms", "temp °C", "time s", "detail"):
        table.add_column(column, justify="right" if column in ("wave", "p95 ms", "temp °C", "time s") else "left",
                         no_wrap=column != "detail")
    for name in doc["order"]:
        d = doc["devices"][name]
        release = f"{d.get('previous') or '(none)'} -> {d.get('new') or '?'}" if d.get("new") else "-"
        if d.get("variant") and d.get("new"):
            release += f" ({d['variant']})"
        result = d["result"]
        table.add_row(str(d["wave"]), name, release, f"[{styles.get(result, '')}]{result}[/]",
                      _latency(d), _fmt(d.get("temperature_c"), ".1f"),
                      _fmt(d.get("seconds") if result != "not reached" else None, ".1f"), _detail(d))
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    counts = doc.get("counts", {})
    ok = sum(counts.get(r, 0) for r in OK_RESULTS)
    others = [f"{n} {r}" for r, n in sorted(counts.items()) if r != "ok" and r not in OK_RESULTS and n]
    console.print("; ".join([f"{ok}/{len(doc['order'])} on the new release", *others, f"record {doc['record']}"]
                            + ([f"took {doc['seconds']:.1f} s"] if doc.get("seconds") else [])), soft_wrap=True)


class LiveProgress:
    """One progress line per wave with counts (rich, on stderr); use as `on_event` of `run_rollout`."""

    def __init__(self, plan: RolloutPlan, enabled: bool = True):
        self.enabled = enabled
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
