"""Build quantization candidates, measure each (size, latency, accuracy), pick the fastest that
meets an accuracy target; mixed precision keeps the most sensitive ops in FP32.

Accuracy is against the FP32 export run by ONNX Runtime (the same graph PyTorch exported; it
matches PyTorch eager to ~1e-6 cosine), one input per call as the device runs them, by the
export's task (edgefleet/model/agreement.py): embed by cosine, classify by top-1 agreement and
probability difference, qa by span agreement and score difference. Sensitivity of an op is the
task's loss (agreement.loss_of: for embed the mean cosine loss) on the calibration texts (qa:
each text as the context of one generic question) when only that op is quantized (dynamic, per
channel) and everything else stays FP32.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgefleet.model.agreement import Agreement, Target, loss_of, rank_of
from edgefleet.model.calibrate import CALIBRATION_METHODS
from edgefleet.model.evaluate import accuracy, interleaved_medians
from edgefleet.model.graph import EXACT_SUFFIX, OUTLIER_MATMUL_SUFFIX, graph_of, quantize_graph
from edgefleet.model.quantize import CALIBRATION_TEXTS, Recipe, build_graph, smoothed_fp32, stable_fp32

__all__ = ["Target", "Measured", "Search", "quantizable_ops", "sensitivity", "search",
           "render_table", "as_json"]

QUANTIZABLE = ("MatMul", "Attention", "Gemm")  # Gemm: a classify head's pooler and classifier


@dataclass(frozen=True)
class Measured:
    """One candidate: its recipe, graph file, size, latency and accuracy."""

    name: str
    recipe: Recipe
    graph: Path
    bytes: int
    latency_ms: float
    accuracy: Agreement
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
    task: str = "embed"


def quantizable_ops(onnx_path) -> list[str]:
    """Return the names of MatMul/Attention/Gemm nodes whose weight is a 2-D initializer."""
    graph = graph_of(onnx_path)
    weights = {item.name for item in graph.initializer if len(item.dims) == 2}
    return [node.name for node in graph.node
            if node.op_type in QUANTIZABLE and len(node.input) > 1 and node.input[1] in weights
            and not node.name.endswith((OUTLIER_MATMUL_SUFFIX, EXACT_SUFFIX))]


class _Evaluator:
    """Run inputs through ORT sessions configured like the runtime; compare with FP32.

    embed: raw sessions, mean pooled; classify and qa: each graph loaded by edge_runtime as a
    bundle would be (its softmax, its span search), from a scratch bundle dir under work.
    """

    def __init__(self, fp32_dir: Path, inputs: list, session_config: dict[str, str],
                 work: Path | None = None):
        from tokenizers import Tokenizer

        from edgefleet.model.export import read_meta

        self.fp32_dir = fp32_dir
        self.task = read_meta(fp32_dir).get("task", "embed")
        self.tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
        self.texts = inputs
        self.session_config = session_config
        self.work = work or fp32_dir
        self.reference = self.run(fp32_dir / "model.onnx", inputs)

    def session(self, path: Path, threads: int = 1):
        import onnxruntime as ort
        from edge_runtime.model import session_options

        options = session_options(threads)
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def model(self, path: Path):
        """Return path loaded by edge_runtime (classify, qa)."""
        from edgefleet.model.task_eval import graph_model

        return graph_model(path, self.fp32_dir, self.work / f"{path.stem}-bundle",
                           self.session_config)

    def embed(self, session, texts: list[str]) -> np.ndarray:
        from edgefleet.model.evaluate import ort_embed

        return ort_embed(session, self.tokenizer, texts)

    def run(self, path: Path, inputs: list):
        """Return the task's outputs of the graph at path, one input per call."""
        from edgefleet.model.task_eval import outputs

        if self.task == "embed":
            return self.embed(self.session(path), inputs)
        return outputs(self.model(path), inputs)

    def caller(self, path: Path):
        """Return fn(inputs) running the graph at path (for timing)."""
        from edgefleet.model.task_eval import caller

        if self.task == "embed":
            session = self.session(path)
            return lambda texts: self.embed(session, texts)
        return caller(self.model(path))

    def timing_input(self, tokens: int):
        from edgefleet.model.task_eval import timing_input

        return timing_input(self.task, tokens, self.tokenizer)

    def accuracy(self, path: Path, inputs: list | None = None, reference=None) -> Agreement:
        from edgefleet.model.task_eval import compare

        got = self.run(path, inputs or self.texts)
        reference = self.reference if reference is None else reference
        return accuracy(got, reference) if self.task == "embed" else compare(self.task, got,
                                                                             reference)


SENSITIVITY_QUESTION = "what is this about?"  # qa: the calibration texts become its contexts


def sensitivity_inputs(task: str, texts: list[str]) -> list:
    """Return the inputs op sensitivity is measured on: the texts, or (qa) question/text pairs."""
    return [(SENSITIVITY_QUESTION, text) for text in texts] if task == "qa" else texts


def sensitivity(evaluator: _Evaluator, smoothed: Path, fp32_dir: Path, work: Path,
                ops: list[str], texts: list[str]) -> list[tuple[str, float]]:
    """Return (op, the task's loss) with only that op quantized, most sensitive first."""
    texts = sensitivity_inputs(evaluator.task, texts)
    reference = evaluator.run(fp32_dir / "model.onnx", texts)
    losses = []
    for op in ops:
        dst = work / "sensitivity.onnx"
        quantize_graph(smoothed, dst, fp32_nodes=[o for o in ops if o != op],
                       op_types_to_quantize=list(QUANTIZABLE))
        losses.append((op, loss_of(evaluator.accuracy(dst, texts, reference))))
    dst.unlink(missing_ok=True)
    return sorted(losses, key=lambda item: item[1], reverse=True)


def _label(recipe: Recipe) -> str:
    base = recipe.method if recipe.method == "dynamic" else f"static-{recipe.calibration}"
    base += "" if recipe.per_channel else "-per-tensor"
    return base + (f"+fp32x{len(recipe.fp32_nodes)}" if recipe.fp32_nodes else "")


def search(fp32_dir, work, texts: list, target: Target | None = None,
           calibration_texts: Path = CALIBRATION_TEXTS, tokens: int = 64, rounds: int = 20,
           methods=CALIBRATION_METHODS, session_config: dict[str, str] | None = None,
           log=print) -> Search:
    """Build and measure dynamic, per-tensor, static (each calibration method) and mixed
    candidates under work/; return them with the fastest that meets target picked.

    texts: the evaluation inputs of the export's task (texts, or question/context pairs for qa).

    Mixed precision starts from the all-INT8 dynamic candidate and the static one with the
    highest min cosine (each only if it misses the target) and keeps the k most sensitive ops
    in FP32, k found by doubling then bisection (each step is one build and one evaluation),
    the fewest that meets the target. Bisection assumes accuracy grows with k; where it does
    not, the k found meets the target but may not be the fewest.
    """
    from edgefleet.model.evaluate import read_texts

    fp32_dir, work, target = Path(fp32_dir), Path(work), target or Target()
    work.mkdir(parents=True, exist_ok=True)
    evaluator = _Evaluator(fp32_dir, texts, session_config or {}, work)
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
            log(f"  {name}: " + " ".join(f"{key} {value}" for key, value in acc.as_dict().items()))
        return measured[name]

    starts = [build(base), build(replace(base, per_channel=False))]
    statics = [build(replace(base, method="static", calibration=m)) for m in methods]
    ops = quantizable_ops(smoothed)
    log(f"sensitivity of {len(ops)} ops (only that op in INT8) on {calibration_texts.name}")
    ranked = sensitivity(evaluator, smoothed, fp32_dir, work, ops, read_texts(calibration_texts))
    best_static = sorted(statics, key=lambda m: rank_of(m.accuracy))[-1:]
    for start in [starts[0]] + best_static:
        if not start.meets:
            _mixed(build, start.recipe, [op for op, _ in ranked])
    _time(measured, evaluator, tokens, rounds)
    timed = list(measured.values())
    passing = [m for m in timed if m.meets]
    picked = min(passing, key=lambda m: m.latency_ms) if passing else max(
        timed, key=lambda m: rank_of(m.accuracy))
    for name in measured:  # the scratch bundles of classify/qa candidates
        shutil.rmtree(work / f"{name}-bundle", ignore_errors=True)
    return Search(candidates=timed, sensitivity=ranked, picked=picked, target=target,
                  fp32_bytes=(fp32_dir / "model.onnx").stat().st_size, tokens=tokens,
                  task=evaluator.task)


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

    engines = {name: evaluator.caller(item.graph) for name, item in measured.items()}
    medians = interleaved_medians(engines, [evaluator.timing_input(tokens)], rounds,
                                  clock=time.thread_time)
    for name, item in list(measured.items()):
        measured[name] = replace(item, latency_ms=medians[name])


COLUMNS = {"embed": (("mean cos", "mean_cosine", 5), ("min cos", "min_cosine", 4),
                     ("NN agree", "neighbour_agreement", 3)),
           "classify": (("top-1 agree", "top1_agreement", 3), ("max |dp|", "max_prob_diff", 4),
                        ("mean |dp|", "mean_prob_diff", 4)),
           "qa": (("span agree", "span_agreement", 3), ("max |dscore|", "max_score_diff", 4),
                  ("mean |dscore|", "mean_score_diff", 4))}


def render_table(result: Search, console=None) -> None:
    """Print the candidates as a rich table, the pick marked."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=132)
    columns = COLUMNS[result.task]
    table = Table(title=f"INT8 candidates, {result.task} (target: "
                        f"{result.target.describe(result.task)}; CPU ms at ~{result.tokens} "
                        "tokens, batch 1, 1 thread, end to end)")
    for column in ("candidate", "FP32 ops", "size", "% FP32", "ms",
                   *(label for label, _, _ in columns), "meets"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for item in sorted(result.candidates, key=lambda m: m.latency_ms):
        mark = " <- picked" if item is result.picked else ""
        metrics = item.accuracy.as_dict()
        table.add_row(item.name + mark, str(len(item.recipe.fp32_nodes)),
                      f"{item.bytes / 1e6:.1f} MB", f"{100 * item.bytes / result.fp32_bytes:.1f}",
                      f"{item.latency_ms:.2f}",
                      *(f"{metrics[key]:.{digits}f}" for _, key, digits in columns),
                      "yes" if item.meets else "no")
    console.print(table)


def as_json(result: Search) -> dict:
    """Return the search as plain data."""
    return {"task": result.task, "target": result.target.for_task(result.task),
            "tokens": result.tokens, "fp32_bytes": result.fp32_bytes,
            "candidates": [m.row(result.fp32_bytes) for m in result.candidates],
            "sensitivity": [{"op": op, "loss": round(loss, 7)} for op, loss in result.sensitivity],
            "picked": result.picked.name}


def keep(result: Search, path: Path) -> None:
    """Write the search report as JSON to path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_json(result), indent=1) + "\n")


def cleanup(work: Path) -> None:
    """Remove the candidates' work directory."""
    shutil.rmtree(work, ignore_errors=True)
