"""Decide a rollout: waves, the failure limit, what a wave's failure rolls back, what a resume re-runs.

Pure: names and results in, decisions out; no SSH, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["RolloutError", "RolloutPlan", "OK_RESULTS", "parse_count", "plan_rollout", "limit_exceeded",
           "choose_canary",
           "to_roll_back", "resume_targets", "env_key"]

# a device ends a rollout in one of these
OK_RESULTS = ("updated", "repaired", "unchanged")  # repaired: on the release already, drift put back
FAILED, ROLLED_BACK, NOT_REACHED, ROLLBACK_FAILED = "failed", "rolled back", "not reached", "rollback failed"


class RolloutError(InputError):
    """The rollout's options or record do not make sense; the message says which and why (exit 2)."""


def parse_count(spec: str | int, total: int, what: str, minimum: int = 0) -> int:
    """Return `spec` ("N" or "P%") as a device count out of `total`; a percentage rounds up.

    With `minimum` 1, a spec of zero (`0`, `0%`) is refused: it cannot mean "at least one".
    """
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            count = math.ceil(total * pct / 100)
        else:
            count = int(text)
            if count < 0:
                raise ValueError
    except ValueError:
        raise RolloutError(f"--{what} {spec!r}: expected a count N >= 0 or a percentage P% (0-100)") from None
    if count == 0 and minimum > 0:
        raise RolloutError(f"--{what} {spec!r}: need at least {minimum} device(s)")
    return max(count, minimum)


@dataclass(frozen=True)
class RolloutPlan:
    """The waves in order, and how many failed devices stop the rollout (more than `max_fail`)."""

    waves: tuple[tuple[str, ...], ...]
    max_fail: int
    parallel: int
    canary_wave: bool = False  # the first wave is a canary

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(name for wave in self.waves for name in wave)

    def describe(self) -> list[str]:
        """Return the plan as lines a person reads."""
        lines = [f"rollout: {len(self.targets)} device(s) in {len(self.waves)} wave(s), at most "
                 f"{self.parallel} at a time; stops when more than {self.max_fail} device(s) fail"]
        for i, wave in enumerate(self.waves, 1):
            kind = "canary" if i == 1 and self.canary_wave else "batch"
            lines.append(f"  wave {i} ({kind}, {len(wave)}): {', '.join(wave)}")
        return lines


def plan_rollout(names: list[str], canary: str | int = 1, batch: str | int = "100%",
                 max_fail: str | int = 0, parallel: str | int = 10) -> RolloutPlan:
    """Split `names` (in order, duplicates dropped) into a canary wave, then batches."""
    names = list(dict.fromkeys(names))
    if not names:
        raise RolloutError("no devices to roll out to")
    try:
        connections = int(parallel)
    except ValueError:
        connections = 0
    if connections < 1:
        raise RolloutError(f"--parallel {parallel!r}: need a count of at least 1 connection")
    total = len(names)
    n_canary = min(parse_count(canary, total, "canary"), total)
    size = parse_count(batch, total, "batch", minimum=1)
    rest = names[n_canary:]
    batches = [tuple(rest[i:i + size]) for i in range(0, len(rest), size)]
    waves = ([tuple(names[:n_canary])] if n_canary else []) + batches
    return RolloutPlan(tuple(waves), parse_count(max_fail, total, "max-fail"), connections, canary_wave=bool(n_canary))


def choose_canary(plan: RolloutPlan, changing: set[str]) -> RolloutPlan:
    """Return `plan` with its canary wave made of devices whose release will change, where there are any:
    a canary already on the new release tests nothing. Each swapped device takes the other's place."""
    if not plan.canary_wave or len(plan.waves) < 2:
        return plan
    canary = list(plan.waves[0])
    later = [n for wave in plan.waves[1:] for n in wave if n in changing]
    swaps = {}
    for i, name in enumerate(canary):
        if name not in changing and later:
            swaps[later.pop(0)] = name
            canary[i] = next(k for k, v in swaps.items() if v == name)
    if not swaps:
        return plan
    waves = [tuple(canary)] + [tuple(swaps.get(n, n) for n in wave) for wave in plan.waves[1:]]
    return RolloutPlan(tuple(waves), plan.max_fail, plan.parallel, canary_wave=True)


def limit_exceeded(failures: int, max_fail: int) -> bool:
    """Return whether `failures` so far stop the rollout."""
    return failures > max_fail


def to_roll_back(wave_results: dict[str, dict]) -> list[str]:
    """Return the devices of a failed wave that took the new release and passed (they go back).

    A result is a dict with `result` and `previous`/`new` release ids; a device already on the
    new release before the rollout (`unchanged`) or with nothing to go back to stays.
    """
    return sorted(name for name, r in wave_results.items()
                  if r.get("result") == "updated" and r.get("previous") and r.get("previous") != r.get("new"))


def resume_targets(record: dict) -> list[str]:
    """Return, in the recorded order, the devices of a rollout record that did not end on the new release."""
    devices = record.get("devices")
    if not isinstance(devices, dict) or "order" not in record:
        raise RolloutError("the rollout record has no devices/order; cannot resume from it")
    return [name for name in record["order"] if devices.get(name, {}).get("result") not in OK_RESULTS]


def env_key(arch: str, python: str, pins: dict[str, str], find_links: str | None, index_url: str | None) -> tuple:
    """Return what decides a device's Python packages: devices sharing it share one resolved env."""
    return (arch, python, tuple(sorted(pins.items())), find_links or "", index_url or "")
