"""Pick a board class's build from a device's measurement (pure): which variant, how many threads.

The rule: only configurations that were measured and passed their own goldens on the device
count. The fastest by p50 at the board's typical length wins when it leads every other one by
more than the noise floor (the control's spread, and never less than MIN_NOISE). When others are
within the floor of it, the lead is noise: the default (int8 at the service's thread count) stays
if it is among them, else the default variant (int8) at the thread count among them, else the
fastest. A device under emulation is measured and reported, never chosen by speed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Config, Measurement

__all__ = ["Choice", "choose", "MIN_NOISE", "DEFAULT_VARIANT"]

# A floor under the measured spread: a control that happened to land within 1% of its twin in a
# few rounds does not prove that a 1% lead is real.
MIN_NOISE = 0.03
DEFAULT_VARIANT = "int8"


@dataclass(frozen=True)
class Choice:
    """The build a board class takes (variant None: no choice made, `reason` says why)."""

    variant: str | None
    threads: int | None
    reason: str
    noise_floor: float
    length: str  # the length the choice was judged at ("64": tokens)
    ranked: tuple[tuple[str, float], ...] = ()  # (variant/threads, p50 ms) of the eligible ones, fastest first


def _eligible(measurement: Measurement, length: str) -> list[Config]:
    return sorted((c for c in measurement.configs
                   if c.status == "measured" and c.golden_passed and length in c.p50_ms),
                  key=lambda c: (c.p50_ms[length], c.threads))


def choose(measurement: Measurement, length: str, default_threads: int, emulated: bool) -> Choice:
    """Return the choice for the board class `measurement` was taken on (see the module's rule)."""
    measured = measurement.noise_floor(length)
    floor = max(MIN_NOISE, measured if measured is not None else 0.0)
    eligible = _eligible(measurement, length)
    ranked = tuple((c.key, c.p50_ms[length]) for c in eligible)

    def none(reason: str) -> Choice:
        return Choice(None, None, reason, floor, length, ranked)

    if emulated:
        return none(f"{measurement.device} is emulated: measured and reported, never chosen by speed")
    if not eligible:
        failed = [f"{c.key}: {c.reason}" for c in measurement.configs if c.status != "measured"]
        return none("no candidate was measured that passed its goldens at "
                    f"{length} tokens" + (f" ({'; '.join(failed)[:300]})" if failed else ""))
    if measured is None:
        return none(f"no noise floor: the control was not measured at {length} tokens")
    best = eligible[0]
    p50 = best.p50_ms[length]
    close = [c for c in eligible[1:] if c.p50_ms[length] <= p50 * (1 + floor)]
    default = next((c for c in eligible if c.variant == DEFAULT_VARIANT and c.threads == default_threads), None)
    if not close:
        runner = f", {eligible[1].key} next at {eligible[1].p50_ms[length]:.2f} ms" if len(eligible) > 1 else ""
        return Choice(best.variant, best.threads, f"fastest at {length} tokens: {best.key} {p50:.2f} ms{runner} "
                      f"(noise floor {floor:.0%})", floor, length, ranked)
    if default is best:
        return Choice(best.variant, best.threads, f"fastest at {length} tokens: {best.key} {p50:.2f} ms, the default "
                      f"(within the noise floor ({floor:.0%}): {_keys(close)})", floor, length, ranked)
    if default is not None and default in close:
        return Choice(default.variant, default.threads,
                      f"the default {default.key}: the fastest ({best.key} {p50:.2f} ms) leads by no more than the "
                      f"noise floor ({floor:.0%}) at {length} tokens", floor, length, ranked)
    # a lead within the noise is no reason to change the variant: the default variant if it is among them
    same = next((c for c in close if c.variant == DEFAULT_VARIANT), None)
    if same is not None:
        return Choice(same.variant, same.threads,
                      f"{same.key}: the default variant, within the noise floor ({floor:.0%}) of the fastest "
                      f"({best.key} {p50:.2f} ms) at {length} tokens", floor, length, ranked)
    return Choice(best.variant, best.threads,
                  f"fastest at {length} tokens: {best.key} {p50:.2f} ms, within the noise floor ({floor:.0%}) of "
                  f"{_keys(close)}; the default variant is not among them", floor, length, ranked)


def _keys(configs: list[Config]) -> str:
    return ", ".join(c.key for c in configs) or "none"
