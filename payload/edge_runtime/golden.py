"""A bundle's golden inputs per task: run them, make expected outputs, compare with them.

One definition for the three places that use goldens: the host writing them into bundle.json
(edgefleet.model.quantize), the device's selftest, and the host's health gate over HTTP.
The expected outputs come from each golden run alone (batch 1); the device's selftest also runs
them as one padded batch and holds those outputs to the same tolerance (a per-row INT8 bundle
gives a text the same result in any batch, edgefleet.model.per_row).

  embed     {"texts", "embeddings", "min_cosine"}          cosine per text >= min_cosine
  classify  {"texts", "scores", "max_abs_diff"}            same label, |p - p_golden| <= tol
  qa        {"questions", "contexts", "answers", "max_abs_diff"}
                                                           same span, |score - golden| <= tol

Each section also holds "tokens": every input's length in tokens at the bundle's max_seq_len.
A target may run the bundle with a lower max_seq_len; inputs longer than that are truncated
there, so their outputs cannot match, and only the goldens that fit are checked (fitting()).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Check", "cosines", "task_of", "items", "run", "expected", "compare", "request",
           "from_response", "fitting", "ROUTES"]

ROUTES = {"embed": "/v1/embed", "classify": "/v1/classify", "qa": "/v1/qa"}
_OUTPUT_KEY = {"embeddings": "embed", "scores": "classify", "answers": "qa"}


@dataclass(frozen=True)
class Check:
    """Per-golden values (cosine, or absolute difference), pass or not, and why."""

    passed: bool
    values: list[float]
    metric: str  # "cosine" (higher is better) or "abs_diff" (lower is better)
    threshold: float
    reason: str

    @property
    def worst(self) -> float:
        """Return the worst value seen (lowest cosine, largest difference)."""
        if not self.values:
            return float("nan")
        return min(self.values) if self.metric == "cosine" else max(self.values)


def task_of(golden: dict) -> str:
    """Return the task a golden section was made for, from its expected-output key."""
    for key, task in _OUTPUT_KEY.items():
        if key in golden:
            return task
    raise ValueError(f"golden has none of {', '.join(_OUTPUT_KEY)}")


def items(golden: dict) -> list:
    """Return the golden inputs: texts, or (question, context) pairs for QA."""
    if task_of(golden) == "qa":
        return list(zip(golden["questions"], golden["contexts"], strict=False))
    return list(golden["texts"])


def fitting(golden: dict, max_seq_len: int | None) -> dict:
    """Return the golden section restricted to the inputs of at most max_seq_len tokens."""
    tokens = golden.get("tokens")
    if max_seq_len is None or tokens is None:
        return golden
    keep = [i for i, n in enumerate(tokens) if n <= max_seq_len]
    return {key: [value[i] for i in keep] if isinstance(value, list) else value
            for key, value in golden.items()}


def _tokens(model, item) -> int:
    pair = list(item) if model.task == "qa" else [item]
    return len(model.tokenizer.encode(*pair).ids)


def run(model, item):
    """Run one golden input at batch 1; return the output as the HTTP API gives it."""
    if model.task == "qa":
        return model.answer(*item)
    if model.task == "classify":
        return model.classify([item])[0]
    return model.embed([item])[0]


def expected(model, inputs: list, tolerance: float) -> dict:
    """Return a golden section for the model's task: inputs, their outputs, the tolerance."""
    outputs = [run(model, item) for item in inputs]
    tokens = [_tokens(model, item) for item in inputs]
    if model.task == "embed":
        return {"texts": list(inputs), "min_cosine": tolerance, "tokens": tokens,
                "embeddings": [[round(float(v), 7) for v in row] for row in outputs]}
    if model.task == "classify":
        return {"texts": list(inputs), "max_abs_diff": tolerance, "tokens": tokens,
                "scores": [{k: round(v, 7) for k, v in out["scores"].items()} for out in outputs]}
    return {"questions": [q for q, _ in inputs], "contexts": [c for _, c in inputs],
            "max_abs_diff": tolerance, "tokens": tokens,
            "answers": [{**out, "score": round(out["score"], 7)} for out in outputs]}


def cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Return the row-wise cosine similarity of two (n, dim) arrays."""
    a = actual / np.maximum(np.linalg.norm(actual, axis=1, keepdims=True), 1e-12)
    b = expected / np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def _cosines(golden: dict, outputs: list) -> Check:
    a = np.asarray(outputs, dtype=np.float32)
    b = np.asarray(golden["embeddings"], dtype=np.float32)
    threshold = float(golden["min_cosine"])
    if a.ndim != 2 or a.shape != b.shape:
        return Check(False, [], "cosine", threshold,
                     f"golden embeddings shape {b.shape} != outputs {a.shape}")
    values = [float(v) for v in cosines(a, b)]
    failed = [i for i, v in enumerate(values) if not v >= threshold]
    return Check(not failed, values, "cosine", threshold,
                 f"all {len(values)} golden texts have cosine >= {threshold}" if not failed else
                 f"{len(failed)} of {len(values)} golden texts below {threshold}: index {failed}")


def _differences(task: str, golden: dict, outputs: list) -> Check:
    threshold = float(golden["max_abs_diff"])
    wanted = golden["scores"] if task == "classify" else golden["answers"]
    values, failed = [], []
    for index, (want, got) in enumerate(zip(wanted, outputs, strict=False)):
        if task == "classify":
            same = set(want) == set(got["scores"]) and max(want, key=want.get) == got["label"]
            diff = max((abs(p - got["scores"].get(k, np.inf)) for k, p in want.items()),
                       default=np.inf)
        else:
            same = (want["start"], want["end"]) == (got["start"], got["end"])
            diff = abs(float(want["score"]) - float(got["score"]))
        values.append(float(diff) if same else float("inf"))
        if not (same and diff <= threshold):
            failed.append(index)
    if len(outputs) != len(wanted):
        return Check(False, values, "abs_diff", threshold,
                     f"{len(outputs)} outputs for {len(wanted)} golden inputs")
    what = "label" if task == "classify" else "answer span"
    return Check(not failed, values, "abs_diff", threshold,
                 f"all {len(values)} golden inputs give the same {what} within {threshold}"
                 if not failed else f"{len(failed)} of {len(values)} golden inputs differ "
                 f"({what} or more than {threshold}): index {failed}")


def compare(golden: dict, outputs: list) -> Check:
    """Compare outputs (one per golden input, as run() returns them) with the golden."""
    task = task_of(golden)
    return _cosines(golden, outputs) if task == "embed" else _differences(task, golden, outputs)


def request(task: str, item) -> tuple[str, dict]:
    """Return (route, JSON payload) that runs one golden input over the HTTP API."""
    if task == "qa":
        return ROUTES[task], {"question": item[0], "context": item[1]}
    return ROUTES[task], {"texts": [item]}


def from_response(task: str, body: dict):
    """Return the output of one golden input from the route's JSON answer."""
    if task == "embed":
        return body["embeddings"][0]
    if task == "classify":
        return body["results"][0]
    return {key: body[key] for key in ("answer", "score", "start", "end")}
