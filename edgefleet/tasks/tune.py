"""The tune task: measure a bundle set on one device of each board class and record the choice."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path

from invoke import Exit

from ..inventory import load_inventory
from ..paths import build_dir, bundle_dir, targets_dir
from ..status import plain
from ..tune.recorded import shown, tuning_document, write_tuning
from ..tune.run import BoardResult, TuneOptions, bundle_set, pick_devices, tune_group
from ._errors import UsageError, exits_on_user_error
from ._task import task


def _numbers(text, what: str, low: int, high: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--{what} {text!r}: expected comma-separated whole numbers") from None
    if not values or not all(low <= v <= high for v in values):
        raise UsageError(f"--{what} {text!r}: each must be {low}..{high}")
    return values


def print_tuning(results: list[BoardResult], console=None) -> None:
    """Print one table row per measured configuration, then each board's choice and its file."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    lengths = sorted({k for r in results if r.measurement for c in r.measurement.configs for k in c.p50_ms
                      if k.isdigit()}, key=int)
    table = Table(title="edgefleet tune (p50 ms on the device, batch 1)")
    for column in ("board", "device", "variant", "threads", "goldens", *[f"{n} tok" for n in lengths], "goldens ms",
                   "note"):
        table.add_column(column)
    for r in results:
        if r.measurement is None:
            table.add_row(r.board, r.device, "-", "-", "-", *["-"] * len(lengths), "-", plain(r.error[:160]))
            continue
        chosen = (r.choice.variant, r.choice.threads) if r.choice else (None, None)
        device = r.device + (" (emulated)" if r.emulated else "")
        skipped: dict[tuple[str, str], list[str]] = {}  # one row for a variant's skipped thread counts
        for c in r.measurement.configs:
            if c.status == "skipped":
                skipped.setdefault((c.variant, c.reason[:80]), []).append(str(c.threads))
                continue
            note = "CHOSEN" if (c.variant, c.threads) == chosen else c.reason[:80]
            goldens = "pass" if c.golden_passed else "FAIL"
            table.add_row(r.board, device, c.variant, str(c.threads), goldens,
                          *[f"{c.p50_ms[n]:.2f}" if n in c.p50_ms else "-" for n in lengths],
                          f"{c.p50_ms['golden']:.2f}" if "golden" in c.p50_ms else "-", plain(note))
        for (variant, reason), counts in skipped.items():
            table.add_row(r.board, device, variant, ",".join(counts), "-", *["-"] * len(lengths), "-",
                          plain(f"skipped: {reason}"))
    console.print(table)
    for r in results:
        if r.measurement is None or r.choice is None:
            continue
        m = r.measurement
        where = f" ({shown(r.path)})" if r.path else ""
        what = (f"variant {r.choice.variant}, threads {r.choice.threads}" if r.choice.variant
                else "no choice")
        console.print(plain(f"{r.board}: {what}{where}: {r.choice.reason}; onnxruntime {m.onnxruntime}, "
                            f"{m.rounds} rounds, control spread -> noise floor {r.choice.noise_floor:.0%}"))


@task(help={
    "group": "every board class in a group: one device of each measured",
    "target": "one device (its board class)",
    "bundle": "any bundle of the set (default: config edgefleet.bundle); its siblings <model>-int8, "
              "-int8-static, -fp32, -fp16 beside it are the candidates",
    "rounds": "timing rounds, rotated between candidates (default 5)",
    "threads": "comma-separated thread counts (default: 1 .. the board's big cores)",
    "length": "the board's typical length in tokens: the choice is the fastest p50 there (default 64)",
    "lengths": "the length sweep in tokens (default 16,64,128)",
    "json": "print one JSON document (per board: what build/tuning/<board>.json holds) instead of a table",
    "parallel": "at most this many board classes measured at once (default 4; 1 where the devices share a "
                "machine, as the lab's do)",
})
@exits_on_user_error
def tune(c, group=None, target=None, bundle=None, rounds=5, threads=None, length=64, lengths="16,64,128",
         json=False, parallel=4):
    """Measure the bundle variants and thread counts on one device per board class; record the choice."""
    if bool(group) == bool(target):
        raise UsageError("give exactly one of --target or --group")
    inventory = load_inventory(targets_dir(c))
    targets = inventory.group(group) if group else [inventory.target(target)]
    typical = _numbers(length, "length", 2, 4096)[0]
    sweep = tuple(sorted(set(_numbers(lengths, "lengths", 2, 4096)) | {typical}))
    options = TuneOptions(rounds=_numbers(rounds, "rounds", 1, 1000)[0], lengths=sweep, length=typical,
                          threads=_numbers(threads, "threads", 1, 256) if threads else None)
    bundles = bundle_set(Path(bundle) if bundle else bundle_dir(c))
    say = (lambda line: print(line, file=sys.stderr)) if json else print
    say(f"candidates: {', '.join(f'{v} ({p.name})' for v, p in bundles.items())}")
    say(f"measuring on one device of each board class: {', '.join(sorted(pick_devices(targets)))} ...")
    results = tune_group(targets, bundles, options, log=say, parallel=_numbers(parallel, "parallel", 1, 64)[0])
    for result in results:
        if result.measurement is not None:
            result.path = write_tuning(build_dir(c), result, bundles, options)
    if json:
        print(jsonlib.dumps({"boards": {r.board: tuning_document(r, bundles, options) if r.measurement
                                        else {"device": r.device, "error": r.error} for r in results}}, indent=1))
    else:
        print_tuning(results)
    failed = [r for r in results if r.measurement is None]
    if failed:
        raise Exit("; ".join(f"{r.board}: {r.error[:300]}" for r in failed), code=1)
