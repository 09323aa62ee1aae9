"""Build quantization candidates, measure each (size, latency, accuracy), pick the fastest that
meets an accuracy target; mixed precision keeps the most sensitive ops in FP32.

Accuracy is against the FP32 export run by ONNX Runtime (the same graph PyTorch exported; it
matches PyTorch eager to ~1e-6 cosine), one text per call as the device runs them. Sensitivity
of an op is the mean cosine loss on the calibration texts when only that op is quantized
(dynamic, per channel) and everything else stays FP32.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgefleet.model.calibrate import CALIBRATION_METHODS
from edgefleet.model.evaluate import Accuracy, accuracy, interleaved_medians, text_of
from edgefleet.model.graph import EXACT_SUFFIX, OUTLIER_MATMUL_SUFFIX, graph_of, quantize_graph
from edgefleet.model.quantize import CALIBRATION_TEXTS, Recipe, build_graph, smoothed_fp32, stable_fp32

__all__ = ["Target", "Measured", "Search", "quantizable_ops", "sensitivity", "search",
           "render_table", "as_json"]

QUANTIZABLE = ("MatMul", "Attention")


@dataclass(frozen=True)
class Target:
    """The accuracy a candidate must reach against FP32 on the evaluation texts."""

    min_cosine: float = 0.99
    mean_cosine: float = 0.998

    def met(self, acc: Accuracy) -> bool:
        return acc.min >= self.min_cosine and acc.mean >= self.mean_cosine


@dataclass(frozen=True)
class Measured:
    """One candidate: its recipe, graph file, size, latency and accuracy."""

    name: str
    recipe: Recipe
    graph: Path
    bytes: int
    latency_ms: float
    accuracy: Accuracy
    meets: bool

    def row(self, fp32_bytes: int) -> dict:
        return {"name": self.name, "method": self.recipe.method,
                "calibration": self.recipe.calibration,
                "fp32_nodes": list(self.recipe.fp32_nodes), "bytes": self.bytes,
                "size_vs_fp32": round(self.bytes / fp32_bytes, 4),
                "latency_ms": round(self.latency_ms, 3), **self.accuracy.as_dict(),
                "meets_target": self.meets}


@dataclass(frozen=True)
class Search:
    """Every candidate measured, the ops ranked by sensitivity, and the pick."""

    candidates: list[Measured]
    sensitivity: list[tuple[str, float]]
    picked: Measured
    target: Target
    fp32_bytes: int
    tokens: int


def quantizable_ops(onnx_path) -> list[str]:
    """Return the names of MatMul/Attention nodes whose weight is a 2-D initializer."""
    graph = graph_of(onnx_path)
    weights = {item.name for item in graph.initializer if len(item.dims) == 2}
    return [node.name for node in graph.node
            if node.op_type in QUANTIZABLE and len(node.input) > 1 and node.input[1] in weights
            and not node.name.endswith((OUTLIER_MATMUL_SUFFIX, EXACT_SUFFIX))]


class _Evaluator:
    """Embed texts with ORT sessions configured like the runtime; compare with FP32."""

    def __init__(self, fp32_dir: Path, texts: list[str], session_config: dict[str, str]):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
        self.texts = texts
        self.session_config = session_config
        self.reference = self.embed(self.session(fp32_dir / "model.onnx"), texts)

    def session(self, path: Path, threads: int = 1):
        import onnxruntime as ort
        from edge_runtime.model import session_options

        options = session_options(threads)
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def embed(self, session, texts: list[str]) -> np.ndarray:
        from edgefleet.model.evaluate import ort_embed

        return ort_embed(session, self.tokenizer, texts)

    def accuracy(self, path: Path, texts: list[str] | None = None,
                 reference: np.ndarray | None = None) -> Accuracy:
        rows = self.embed(self.session(path), texts or self.texts)
        return accuracy(rows, self.reference if reference is None else reference)


def sensitivity(evaluator: _Evaluator, smoothed: Path, fp32_dir: Path, work: Path,
                ops: list[str], texts: list[str]) -> list[tuple[str, float]]:
    """Return (op, mean cosine loss) with only that op quantized, most sensitive first."""
    reference = evaluator.embed(evaluator.session(fp32_dir / "model.onnx"), texts)
    losses = []
    for op in ops:
        dst = work / "sensitivity.onnx"
        quantize_graph(smoothed, dst, fp32_nodes=[o for o in ops if o != op],
                       op_types_to_quantize=list(QUANTIZABLE))
        losses.append((op, 1.0 - evaluator.accuracy(dst, texts, reference).mean))
    dst.unlink(missing_ok=True)
    return sorted(losses, key=lambda item: item[1], reverse=True)


def _label(recipe: Recipe) -> str:
    base = recipe.method if recipe.method == "dynamic" else f"static-{recipe.calibration}"
    base += "" if recipe.per_channel else "-per-tensor"
    return base + (f"+fp32x{len(recipe.fp32_nodes)}" if recipe.fp32_nodes else "")


def search(fp32_dir, work, texts: list[str], target: Target = Target(),
           calibration_texts: Path = CALIBRATION_TEXTS, tokens: int = 64, rounds: int = 20,
           methods=CALIBRATION_METHODS, session_config: dict[str, str] | None = None,
           log=print) -> Search:
    """Build and measure dynamic, per-tensor, static (each calibration method) and mixed
    candidates under work/; return them with the fastest that meets target picked.

    Mixed precision starts from the all-INT8 dynamic candidate and the static one with the
    highest min cosine (each only if it misses the target) and keeps the k most sensitive ops
    in FP32, k found by doubling then bisection (each step is one build and one evaluation),
    the fewest that meets the target. Bisection assumes accuracy grows with k; where it does
    not, the k found meets the target but may not be the fewest.
    """
    from edgefleet.model.evaluate import read_texts

    fp32_dir, work = Path(fp32_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    evaluator = _Evaluator(fp32_dir, texts, session_config or {})
    base = Recipe()
    assert base.smooth_alpha is not None  # the candidates share one smoothed graph (SMOOTH_ALPHA)
    smoothed = work / "smoothed.onnx"
    source = stable_fp32(fp32_dir, work / "stable.onnx") if base.arch_stable else None
    smoothed_fp32(fp32_dir, smoothed, base.smooth_alpha, base.outliers, calibration_texts,
                  base.fold_values, base.outlier_after_bias, source=source)
    measured: dict[str, Measured] = {}

    def build(recipe: Recipe) -> Measured:
        name = _label(recipe)
        if name not in measured:
            graph = work / f"{name}.onnx"
            build_graph(fp32_dir, recipe, graph, smoothed, calibration_texts)
            acc = evaluator.accuracy(graph)
            measured[name] = Measured(name, recipe, graph, graph.stat().st_size, 0.0, acc,
                                      target.met(acc))
            log(f"  {name}: mean {acc.mean:.5f} min {acc.min:.4f}")
        return measured[name]

    starts = [build(base), build(replace(base, per_channel=False))]
    statics = [build(replace(base, method="static", calibration=m)) for m in methods]
    ops = quantizable_ops(smoothed)
    log(f"sensitivity of {len(ops)} ops (only that op in INT8) on {calibration_texts.name}")
    ranked = sensitivity(evaluator, smoothed, fp32_dir, work, ops, read_texts(calibration_texts))
    best_static = sorted(statics, key=lambda m: (m.accuracy.min, m.accuracy.mean))[-1:]
    for start in [starts[0]] + best_static:
        if not start.meets:
            _mixed(build, start.recipe, [op for op, _ in ranked])
    _time(measured, evaluator, tokens, rounds)
    timed = list(measured.values())
    passing = [m for m in timed if m.meets]
    picked = min(passing, key=lambda m: m.latency_ms) if passing else max(
        timed, key=lambda m: (m.accuracy.min, m.accuracy.mean))
    return Search(candidates=timed, sensitivity=ranked, picked=picked, target=target,
                  fp32_bytes=(fp32_dir / "model.onnx").stat().st_size, tokens=tokens)


def _mixed(build, recipe: Recipe, ranked: list[str]) -> None:
    """Build recipe with the k most sensitive ops in FP32 for the fewest k that meets."""
    def with_k(k: int) -> Measured:
        return build(replace(recipe, fp32_nodes=tuple(sorted(ranked[:k]))))

    low, high = 0, 1
    while high < len(ranked) and not with_k(high).meets:
        low, high = high, min(2 * high, len(ranked))
    if high == len(ranked) and not with_k(high).meets:
        return
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if with_k(middle).meets else (middle, high)


def _time(measured: dict[str, Measured], evaluator: _Evaluator, tokens: int,
          rounds: int) -> None:
    """Fill in each candidate's median ms for one ~tokens text, all interleaved, in CPU time
    of the calling thread (one intra-op thread runs every kernel on it): on a loaded machine
    wall time mostly measures the other processes."""
    import time

    text = text_of(tokens, evaluator.tokenizer)
    engines = {}
    for name, item in measured.items():
        session = evaluator.session(item.graph)
        engines[name] = lambda texts, s=session: evaluator.embed(s, texts)
    medians = interleaved_medians(engines, [text], rounds, clock=time.thread_time)
    for name, item in list(measured.items()):
        measured[name] = replace(item, latency_ms=medians[name])


def render_table(result: Search, console=None) -> None:
    """Print the candidates as a rich table, the pick marked."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=132)
    table = Table(title=f"INT8 candidates (target: mean cosine >= {result.target.mean_cosine}, "
                        f"min >= {result.target.min_cosine}; CPU ms at ~{result.tokens} "
                        "tokens, batch 1, 1 thread, end to end)")
    for column in ("candidate", "FP32 ops", "size", "% FP32", "ms", "mean cos", "min cos",
                   "NN agree", "meets"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for item in sorted(result.candidates, key=lambda m: m.latency_ms):
        mark = " <- picked" if item is result.picked else ""
        table.add_row(item.name + mark, str(len(item.recipe.fp32_nodes)),
                      f"{item.bytes / 1e6:.1f} MB", f"{100 * item.bytes / result.fp32_bytes:.1f}",
                      f"{item.latency_ms:.2f}", f"{item.accuracy.mean:.5f}",
                      f"{item.accuracy.min:.4f}", f"{item.accuracy.neighbours:.3f}",
                      "yes" if item.meets else "no")
    console.print(table)


def as_json(result: Search) -> dict:
    """Return the search as plain data."""
    return {"target": {"min_cosine": result.target.min_cosine,
                       "mean_cosine": result.target.mean_cosine},
            "tokens": result.tokens, "fp32_bytes": result.fp32_bytes,
            "candidates": [m.row(result.fp32_bytes) for m in result.candidates],
            "sensitivity": [{"op": op, "mean_cosine_loss": round(loss, 7)}
                            for op, loss in result.sensitivity],
            "picked": result.picked.name}


def keep(result: Search, path: Path) -> None:
    """Write the search report as JSON to path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_json(result), indent=1) + "\n")


def cleanup(work: Path) -> None:
    """Remove the candidates' work directory."""
    shutil.rmtree(work, ignore_errors=True)
