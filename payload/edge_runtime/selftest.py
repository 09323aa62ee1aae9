"""Check a loaded model against the bundle's golden outputs and measure its latency."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from edge_runtime.golden import compare, cosines, fitting, task_of
from edge_runtime.golden import items as golden_items
from edge_runtime.golden import run as run_golden

__all__ = ["SelftestResult", "selftest", "percentiles", "profile", "cosines", "rss_mib"]


@dataclass(frozen=True)
class SelftestResult:
    """Per-golden values against the expected outputs and batch-1 latency percentiles (ms).

    cosines holds the per-golden values: cosines for embed bundles, absolute differences
    (score or probability) for classify and qa; metric says which, min_cosine the threshold.
    """

    passed: bool
    reason: str
    cosines: list[float]
    min_cosine: float
    latency_ms: dict[str, float]
    rss_mib: float = 0.0
    metric: str = "cosine"

    @property
    def worst(self) -> float:
        """Return the worst per-golden value (lowest cosine, largest difference), 0.0 if none."""
        if not self.cosines:
            return 0.0
        return min(self.cosines) if self.metric == "cosine" else max(self.cosines)

    def lines(self) -> list[str]:
        """Return a short human report, one line per item."""
        out = [f"{self.metric}[{i}] = {value:.6f}" for i, value in enumerate(self.cosines)]
        out.append("latency_ms " + " ".join(f"{k}={v:.2f}" for k, v in self.latency_ms.items()
                                            if k != "p90"))
        out.append(f"rss_mib {self.rss_mib:.1f}")
        out.append(("PASS" if self.passed else "FAIL") + f": {self.reason}")
        return out


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """Return p50/p90/p95/p99 of latency samples."""
    values = np.percentile(np.asarray(samples_ms, dtype=np.float64), [50, 90, 95, 99])
    return {name: float(value) for name, value in zip(("p50", "p90", "p95", "p99"), values, strict=True)}


def rss_mib() -> float:
    """Return this process's VmRSS from /proc/self/status in MiB (0.0 if unknown)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _timed(call, inputs: list, runs: int) -> tuple[list, list[float]]:
    samples, outputs = [], []
    for run in range(max(runs, 1)):
        for item in inputs:
            started = time.perf_counter()
            output = call(item)
            samples.append((time.perf_counter() - started) * 1000.0)
            if run == 0:
                outputs.append(output)
    return outputs, samples


def _as_one_batch(model, golden: dict, inputs: list):
    """Run the goldens (embed, classify) as one padded batch and compare them with the same
    tolerance: a text's output must not depend on its batch (the server may batch requests).
    QA answers one pair per call: None."""
    if model.task == "qa" or len(inputs) < 2:
        return None
    outputs = (list(model.embed(inputs)) if model.task == "embed" else
               model.classify(inputs))
    check = compare(golden, outputs)
    if check.passed:
        return check
    return replace(check, reason=f"run as one batch: {check.reason}")


def selftest(model, runs: int = 3) -> SelftestResult:
    """Run every golden input at batch 1, then the goldens as one batch, and compare each with
    its expected output."""
    golden = model.meta.get("golden")
    try:
        inputs = golden_items(golden) if isinstance(golden, dict) else []
        task = task_of(golden) if inputs else None
        if inputs:  # a target's lower max_seq_len truncates longer goldens: check the rest
            golden = fitting(golden, model.max_seq_len)
            skipped, inputs = len(inputs) - len(golden_items(golden)), golden_items(golden)
    except (KeyError, TypeError, ValueError) as error:
        return SelftestResult(False, f"bundle.json golden is malformed: {error}", [], 0.0, {})
    if not inputs:
        return SelftestResult(False, "bundle.json has no golden inputs" + (
            f" of at most max_seq_len {model.max_seq_len} tokens" if golden else ""),
            [], 0.0, {})
    if task != model.task:
        return SelftestResult(False, f"golden outputs are for task {task!r}, the bundle's task "
                                     f"is {model.task!r}", [], 0.0, {})
    outputs, samples = _timed(lambda item: run_golden(model, item), inputs, runs)
    try:
        check = compare(golden, outputs)
    except (KeyError, TypeError, ValueError) as error:
        return SelftestResult(False, f"bundle.json golden is malformed: {error}", [], 0.0, {})
    batched = _as_one_batch(model, golden, inputs)
    if check.passed and batched is not None and not batched.passed:
        check = batched
    reason = check.reason + (f" ({skipped} longer than max_seq_len {model.max_seq_len} "
                             "not checked)" if skipped else "")
    return SelftestResult(check.passed, reason, check.values, check.threshold,
                          percentiles(samples), rss_mib(), check.metric)


def profile(model, lengths=(8, 16, 32, 64, 128, 256), runs: int = 10) -> list[dict]:
    """Measure batch-1 end-to-end latency for inputs of about each token length (for QA: a
    short question and a context of that length, truncated like any)."""
    rows = []
    for length in lengths:
        if length > model.max_seq_len:
            continue
        text = " ".join(["edge"] * max(length - 2, 1))
        item = ("what is it?", text) if model.task == "qa" else text
        tokens = len(model.tokenizer.encode(*([*item] if model.task == "qa" else [item])).ids)
        run_golden(model, item)  # warm-up
        _, samples = _timed(lambda value: run_golden(model, value), [item], runs)
        rows.append({"tokens": tokens, **percentiles(samples)})
    return rows
