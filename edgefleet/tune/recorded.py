"""The recorded choice per board class (`build/tuning/<board>.json`): written by `tune`, applied by
deploy and rollout to every target of that board unless the inventory pins the value.

A pin is a value set by a group or the device itself (`bundle.precision`, `runtime.threads`,
`runtime.affinity`); the board profile's own value is the default the measurement replaces.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..deploy.device import now
from ..deploy.variant import VARIANTS
from ..errors import InputError
from ..inventory import Target
from .records import Config

__all__ = ["TUNING_DIR", "Tuned", "tuning_document", "write_tuning", "read_tuning", "apply_tuning", "shown"]

TUNING_DIR = "tuning"  # under the build dir
FORMAT = 1


@dataclass(frozen=True)
class Tuned:
    """What a target takes from its board's tuning file, and the line that says so."""

    variant: str | None
    threads: int | None
    path: Path
    note: str


def _config(c: Config) -> dict:
    return {"variant": c.variant, "threads": c.threads, "status": c.status, "reason": c.reason,
            "golden_passed": c.golden_passed, "providers": list(c.providers), "p50_ms": c.p50_ms,
            "p90_ms": c.p90_ms, "samples": c.samples}


def tuning_document(result, bundles: dict[str, Path], options) -> dict:
    """Return the tuning file's content for one board's result (run.BoardResult)."""
    m, choice = result.measurement, result.choice
    return {
        "format": FORMAT, "board": result.board, "device": result.device, "emulated": result.emulated,
        "date": now(), "onnxruntime": m.onnxruntime, "python": m.python, "machine": m.machine,
        "usable_cores": list(m.usable_cores), "rounds": m.rounds, "seconds": m.seconds,
        "bundles": {v: p.name for v, p in bundles.items()},
        "lengths": list(options.lengths), "typical_tokens": options.length,
        "noise_floor": round(choice.noise_floor, 4),
        "choice": None if choice.variant is None else {"variant": choice.variant, "threads": choice.threads},
        "reason": choice.reason,
        "configs": [_config(c) for c in m.configs],
        "control": _config(m.control) if m.control else None,
    }


def write_tuning(build_dir: Path, result, bundles: dict[str, Path], options) -> Path:
    """Write build/tuning/<board>.json (atomically); return its path."""
    path = Path(build_dir) / TUNING_DIR / f"{result.board}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(tuning_document(result, bundles, options), indent=1) + "\n")
    tmp.replace(path)
    return path


def read_tuning(path: Path) -> tuple[str | None, int | None]:
    """Return the (variant, threads) a tuning file chose ((None, None): it made no choice)."""
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON: {error} (run `invoke tune` again)") from None
    choice = doc.get("choice", "missing") if isinstance(doc, dict) else "missing"
    if choice is None:
        return None, None
    if not isinstance(choice, dict):
        raise InputError(f"{path}: key 'choice' must be an object or null (run `invoke tune` again)")
    variant, threads = choice.get("variant"), choice.get("threads")
    if variant not in VARIANTS:
        raise InputError(f"{path}: key 'choice.variant' must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
        raise InputError(f"{path}: key 'choice.threads' must be a thread count, got {threads!r}")
    return variant, threads


def _pinned(target: Target, *keys: tuple[str, ...]) -> str | None:
    for key in keys:
        origin = target.origins.get(key)
        if origin is not None and not origin.layer.startswith("board "):
            return f"{'.'.join(key)} set by {origin}"
    return None


def apply_tuning(target: Target, build_dir: Path) -> tuple[Target, Tuned | None]:
    """Return `target` with its board's recorded choice applied where the inventory pins nothing."""
    path = Path(build_dir) / TUNING_DIR / f"{target.board.name}.json"
    if not path.is_file():
        return target, None
    variant, threads = read_tuning(path)
    if variant is None:
        return target, Tuned(None, None, path, f"no tuned choice in {shown(path)}: board defaults")
    settings, notes = target.settings, []
    pin = _pinned(target, ("bundle", "precision"))
    if pin:
        notes.append(f"variant {settings.bundle.precision} (pinned: {pin}; tuned {variant} not used)")
        variant = None
    else:
        settings = settings.model_copy(update={"bundle": settings.bundle.model_copy(update={"precision": variant})})
        notes.append(f"variant {variant} (tuned: {shown(path)})")
    pin = _pinned(target, ("runtime", "threads"), ("runtime", "affinity"))
    big = list(settings.big_cores)
    if pin:
        notes.append(f"threads {settings.threads} (pinned: {pin})")
        threads = None
    elif big:
        runtime = settings.runtime.model_copy(update={"affinity": big[:threads], "threads": None})
        settings = settings.model_copy(update={"runtime": runtime})
        notes.append(f"threads {threads} on cores {big[:threads]} (tuned)")
    else:
        settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update={"threads": threads})})
        notes.append(f"threads {threads} (tuned)")
    return dataclasses.replace(target, settings=settings), Tuned(variant, threads, path, ", ".join(notes))


def shown(path: Path) -> str:
    """Return `path` relative to the working directory where it is below it (build/tuning/pi5.json)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
