"""Measure candidate bundles and thread counts on this device; print one JSON document (`tune`).

Sent by the host as source (`python3 -c`), run with the device's current release on the path
(its edge_runtime, onnxruntime, tokenizers), so what it measures is what the service would run.
One argument: a JSON spec

    {"candidates": {"int8": DIR, "fp32": DIR, ...}, "threads": [1, 2], "cores": [0, 1, 2, 3],
     "lengths": [16, 64, 128], "rounds": 5, "budget_s": 200, "control": "int8", "config": PATH}

Every candidate is loaded once per thread count, pinned to the first N of `cores` that this
process may use (as the service pins itself), with runtime.yaml's providers (`config`), and
checked against its own goldens; then each round times every configuration at every length
(and the goldens), in an order rotated every round, with a second copy of the `control`
configuration loaded apart: its distance from the first is the noise floor.
An fp16 candidate is measured only where a GPU provider is active: on a CPU it says so.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

FORMAT = 1
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CONTROL = "control"


def _text_of(model, tokens: int) -> str:
    """Return a text of about `tokens` tokens (special tokens counted) for this tokenizer."""
    words = max(tokens - 2, 1)
    text = " ".join(["the"] * words)
    while words > 1 and model.token_lengths([text])[0] > tokens:
        words -= 1
        text = " ".join(["the"] * words)
    return text


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def _providers(config_path: str | None) -> tuple[tuple[str, ...], dict]:
    if not config_path or not os.path.isfile(config_path):
        return ("CPUExecutionProvider",), {}
    from edge_runtime.config import read_config

    config = read_config(config_path)
    return tuple(config.providers), dict(config.provider_options)


class _Config:
    """One candidate at one thread count: its model, its cores, its samples by length."""

    def __init__(self, name: str, variant: str, threads: int, cores: list[int]):
        self.name, self.variant, self.threads, self.cores = name, variant, threads, cores
        self.model: Any = None  # an edge_runtime EmbeddingModel once loaded and past its goldens
        self.status, self.reason, self.golden_passed, self.golden_reason = "measured", "", False, ""
        self.active: list[str] = []
        self.samples: dict[str, list[float]] = {}

    def report(self) -> dict:
        return {"variant": self.variant, "threads": self.threads, "cores": self.cores, "status": self.status,
                "reason": self.reason[-300:], "golden_passed": self.golden_passed,
                "golden_reason": self.golden_reason[-300:], "providers": self.active,
                "p50_ms": {k: _ms(v, 0.5) for k, v in self.samples.items() if v},
                "p90_ms": {k: _ms(v, 0.9) for k, v in self.samples.items() if v},
                "samples": min((len(v) for v in self.samples.values()), default=0)}


def _load(config: _Config, bundle: str, providers, options) -> None:
    import onnxruntime

    import edge_runtime
    from edge_runtime.selftest import selftest

    offered = set(providers) & set(onnxruntime.get_available_providers()) & set(GPU_PROVIDERS)
    if config.variant == "fp16" and not offered:  # known before a (slow) load: no GPU provider to run it
        config.status, config.reason = "skipped", (f"no GPU provider active (requested {', '.join(providers)}; "
                                                   f"this onnxruntime offers none of {', '.join(GPU_PROVIDERS)})")
        return
    os.sched_setaffinity(0, config.cores)  # ORT's pool threads inherit it when the session is made
    try:
        model = edge_runtime.load(bundle, threads=config.threads, providers=providers, provider_options=options)
    except Exception as error:  # a bundle this runtime cannot load is a result, not a crash
        config.status, config.reason = "failed", f"load: {type(error).__name__}: {error}"
        return
    config.active = list(model.session.get_providers())
    if config.variant == "fp16" and not set(config.active) & set(GPU_PROVIDERS):
        config.status, config.reason = "skipped", f"no GPU provider active (active: {', '.join(config.active)})"
        return
    result = selftest(model, runs=1)
    config.golden_passed, config.golden_reason = result.passed, result.reason
    if not result.passed:
        config.status, config.reason = "failed", f"goldens: {result.reason}"
        return
    config.model = model


def _time_once(config: _Config, texts: dict[str, str], goldens: list) -> None:
    from edge_runtime.golden import run as run_golden

    model = config.model
    os.sched_setaffinity(0, config.cores)
    for key, text in texts.items():
        started = time.perf_counter()
        model.infer(model.tokenize_one(text))
        config.samples.setdefault(key, []).append((time.perf_counter() - started) * 1000)
    if goldens:
        started = time.perf_counter()
        for item in goldens:
            run_golden(model, item)
        config.samples.setdefault("golden", []).append((time.perf_counter() - started) * 1000 / len(goldens))


def measure(spec: dict) -> dict:
    """Load, check and time every configuration of `spec`; return the report."""
    import onnxruntime

    from edge_runtime.golden import fitting
    from edge_runtime.golden import items as golden_items

    started = time.monotonic()
    allowed = sorted(os.sched_getaffinity(0))
    usable = [c for c in spec["cores"] if c in allowed] or allowed
    providers, options = _providers(spec.get("config"))
    configs: list[_Config] = []
    for variant, bundle in spec["candidates"].items():
        for threads in spec["threads"]:
            config = _Config(f"{variant}/{threads}", variant, threads, usable[:threads])
            configs.append(config)
            if threads > len(usable):
                config.status, config.reason = "skipped", f"only {len(usable)} usable cores ({usable})"
                continue
            _load(config, bundle, providers, options)
    measured = [c for c in configs if c.model is not None]
    control = None
    # the control's twin: the default variant at the most threads measured (what the service runs)
    twins = [c for c in measured if c.variant == spec.get("control")] or measured
    twin = max(twins, key=lambda c: c.threads) if twins else None
    if twin is not None:
        control = _Config(CONTROL, twin.variant, twin.threads, twin.cores)
        _load(control, spec["candidates"][twin.variant], providers, options)
        if control.model is not None:
            measured.append(control)
    rounds = 0
    if measured:
        model: Any = measured[0].model
        texts = {str(n): _text_of(model, n) for n in spec["lengths"] if n <= model.max_seq_len}
        golden = fitting(model.meta.get("golden") or {}, model.max_seq_len) if model.meta.get("golden") else {}
        goldens = golden_items(golden) if golden else []
        for config in measured:  # warm-up: first calls allocate
            _time_once(config, texts, goldens)
            config.samples = {}
        while rounds < spec["rounds"] and time.monotonic() - started < spec["budget_s"]:
            shift = rounds % len(measured)
            for config in measured[shift:] + measured[:shift]:
                _time_once(config, texts, goldens)
            rounds += 1
    return {"format": FORMAT, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "available_providers": list(onnxruntime.get_available_providers()),
            "usable_cores": usable, "rounds": rounds, "seconds": round(time.monotonic() - started, 2),
            "configs": [c.report() for c in configs], "control": control.report() if control else None}


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[1])
        report = measure(spec)
    except Exception as error:  # one JSON document whatever happens: the host names the step
        print(json.dumps({"format": FORMAT, "error": f"{type(error).__name__}: {error}"[-400:]}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
