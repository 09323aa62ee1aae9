"""What a device's measurement says, as typed records: its JSON is untrusted and checked key by key.

`parse_measurement` takes the text `edge_runtime.measure` printed and the spec it was given; any
surprise (not JSON, a missing or odd key, a variant or thread count that was not asked for, a
number that is no latency) is a TuneDataError naming the device and the step.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..errors import EdgefleetError

__all__ = ["TuneDataError", "Config", "Measurement", "parse_measurement", "MAX_REPORT_BYTES", "STEP"]

STEP = "measure"
MAX_REPORT_BYTES = 256 * 1024  # a report of a few dozen configurations is a few KB
_STATUSES = ("measured", "failed", "skipped")
_TEXT = 300  # characters kept of any string from the device
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,40}")
_MAX_MS = 3_600_000.0


class TuneDataError(EdgefleetError):
    """A device's measurement was not what the program prints: the message names device and step."""


@dataclass(frozen=True)
class Config:
    """One candidate at one thread count, as measured (or not) on the device."""

    variant: str
    threads: int
    status: str  # measured, failed (load or goldens), skipped (no GPU provider, too few cores)
    reason: str
    golden_passed: bool
    providers: tuple[str, ...]
    p50_ms: dict[str, float]  # by length ("16", "64", ...) and "golden"
    p90_ms: dict[str, float]
    samples: int

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.threads}"


@dataclass(frozen=True)
class Measurement:
    """A device's whole report: its onnxruntime, the rounds done, every configuration, the control."""

    device: str
    onnxruntime: str
    python: str
    machine: str
    usable_cores: tuple[int, ...]
    rounds: int
    seconds: float
    configs: tuple[Config, ...]
    control: Config | None

    def noise_floor(self, length: str) -> float | None:
        """Return the control's relative distance from its twin at `length` (None: not measured)."""
        if self.control is None or length not in self.control.p50_ms:
            return None
        twin = next((c for c in self.configs if c.key == self.control.key and length in c.p50_ms), None)
        if twin is None:
            return None
        return abs(self.control.p50_ms[length] / twin.p50_ms[length] - 1.0)


class _Reader:
    def __init__(self, device: str):
        self.device = device

    def fail(self, what: str) -> TuneDataError:
        return TuneDataError(f"{self.device}: {STEP}: the device's report {what}")

    def key(self, data: dict, key: str, kind, where: str = ""):
        if key not in data:
            raise self.fail(f"has no key '{where}{key}'")
        value = data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(f"key '{where}{key}' must be {getattr(kind, '__name__', kind)}, got {str(value)[:60]!r}")
        return value

    def text(self, data: dict, key: str, where: str = "") -> str:
        return self.key(data, key, str, where)[-_TEXT:]

    def latencies(self, data: dict, key: str, where: str, lengths: set[str]) -> dict[str, float]:
        table = self.key(data, key, dict, where)
        out = {}
        for name, value in table.items():
            if name not in lengths:
                raise self.fail(f"key '{where}{key}' has a length that was not asked for: {str(name)[:40]!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value < _MAX_MS:
                raise self.fail(f"key '{where}{key}.{name}' must be a latency in ms, got {str(value)[:40]!r}")
            out[name] = float(value)
        return out

    def config(self, data, where: str, spec: dict) -> Config:
        if not isinstance(data, dict):
            raise self.fail(f"key '{where}' must be an object")
        variant = self.text(data, "variant", f"{where}.")
        threads = self.key(data, "threads", int, f"{where}.")
        if variant not in spec["candidates"] or threads not in spec["threads"]:
            raise self.fail(f"key '{where}' is {variant[:40]!r} at {threads} threads, which was not asked for")
        status = self.text(data, "status", f"{where}.")
        if status not in _STATUSES:
            raise self.fail(f"key '{where}.status' must be one of {', '.join(_STATUSES)}, got {status[:40]!r}")
        providers = self.key(data, "providers", list, f"{where}.")
        if not all(isinstance(p, str) and len(p) < 80 for p in providers) or len(providers) > 16:
            raise self.fail(f"key '{where}.providers' must be a short list of names")
        lengths = {str(n) for n in spec["lengths"]} | {"golden"}
        samples = self.key(data, "samples", int, f"{where}.")
        if not 0 <= samples <= spec["rounds"]:
            raise self.fail(f"key '{where}.samples' must be 0..{spec['rounds']}, got {samples}")
        return Config(variant, threads, status, self.text(data, "reason", f"{where}."),
                      self.key(data, "golden_passed", bool, f"{where}."), tuple(providers),
                      self.latencies(data, "p50_ms", f"{where}.", lengths),
                      self.latencies(data, "p90_ms", f"{where}.", lengths), samples)


def parse_measurement(device: str, text: str, spec: dict) -> Measurement:
    """Return the device's report as a Measurement, or raise TuneDataError naming device and step."""
    read = _Reader(device)
    if len(text.encode(errors="replace")) > MAX_REPORT_BYTES:
        raise read.fail(f"is larger than {MAX_REPORT_BYTES // 1024} KB")
    lines = text.strip().splitlines()
    try:  # the document is the program's last line (a library may have printed before it)
        data = json.loads(lines[-1] if lines else "")
    except ValueError:
        raise read.fail(f"is not JSON: {text.strip()[-200:]!r}") from None
    if not isinstance(data, dict):
        raise read.fail("must be a JSON object")
    if "error" in data:
        raise TuneDataError(f"{device}: {STEP} failed on the device: {str(data['error'])[-_TEXT:]}")
    if read.key(data, "format", int) != 1:
        raise read.fail(f"has format {data['format']}, not 1 (an edge_runtime this host does not know)")
    version = read.text(data, "onnxruntime")
    if not _VERSION.fullmatch(version):
        raise read.fail(f"key 'onnxruntime' is not a version: {version[:40]!r}")
    cores = read.key(data, "usable_cores", list)
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096 for c in cores) or len(cores) > 4096:
        raise read.fail("key 'usable_cores' must be a list of core numbers")
    rounds = read.key(data, "rounds", int)
    if not 0 <= rounds <= spec["rounds"]:
        raise read.fail(f"key 'rounds' must be 0..{spec['rounds']}, got {rounds}")
    seconds = read.key(data, "seconds", (int, float))
    configs = read.key(data, "configs", list)
    if len(configs) > len(spec["candidates"]) * len(spec["threads"]):
        raise read.fail(f"has {len(configs)} configurations, more than were asked for")
    parsed = tuple(read.config(c, f"configs[{i}]", spec) for i, c in enumerate(configs))
    if len({c.key for c in parsed}) != len(parsed):
        raise read.fail("names a configuration twice")
    control = data.get("control")
    return Measurement(device, version, read.text(data, "python"), read.text(data, "machine"), tuple(cores), rounds,
                       float(seconds), parsed, None if control is None else read.config(control, "control", spec))
