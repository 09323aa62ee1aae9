"""Per-node ORT profiles of several engines side by side, summed by op type and by group.

Used by `benchmarks/bench_model.py --profile`: each engine (a bundle directory, loaded by
edge_runtime as on a device) runs the same text in rotated rounds with ORT's profiler on, one
intra-op thread; the kernel time of every node is summed per op type and per group of ops (the
INT8 GEMMs, the per-row quantization chain, the attention core, ...) and printed per run, with
the engine's median CPU time per call (the profiler's own overhead included) beside it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

__all__ = ["profile_engines", "format_profiles", "group_of"]

# node-name fragments of the graphs edgefleet writes (edgefleet.model.per_row, .stable, .smooth)
_GROUPS = (
    ("per_row/", "per-row quantize chain"),
    ("_smooth", "SmoothQuant scales"),
    ("_outlier", "outlier FP32 path"),
    ("Attention_", "attention core (unfused)"),
    ("stable/mask", "attention core (unfused)"),
)
_INT8_GEMMS = {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger", "QAttention",
               "DynamicQuantizeLinear"}
_NORMS = {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
          "QEmbedLayerNormalization", "SimplifiedLayerNormalization"}


def group_of(node: str, op: str) -> str:
    """Return the group a profiled node belongs to (by its name, else its op type)."""
    if op in _INT8_GEMMS:
        return "INT8 GEMMs (+ QAttention)" if op == "QAttention" else "INT8 GEMMs"
    for fragment, group in _GROUPS:
        if fragment in node:
            return group
    if op in _NORMS or "/mean" in node or "/var" in node or "LayerNorm" in node:
        return "layer norms (+ residual Adds)"
    if op in ("Attention", "MultiHeadAttention"):
        return "FP32 attention"
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        return "FP32 MatMul"
    if op in ("BiasGelu", "FastGelu", "Gelu"):
        return "GELU"
    return "other (residual/bias Add, Cast, Reshape...)"


def _summarise(events: list[dict]) -> dict:
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    ops, groups, counts = Counter(), Counter(), Counter()
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        ops[op] += event.get("dur", 0)
        counts[op] += 1
        groups[group_of(name[: -len("_kernel_time")], op)] += event.get("dur", 0)
    runs = max(runs, 1)
    return {"runs": runs,
            "kernel_ms": sum(ops.values()) / runs / 1000,
            "nodes": sum(counts.values()) / runs,
            "ops": {op: {"ms": us / runs / 1000, "nodes": counts[op] / runs}
                    for op, us in ops.most_common()},
            "groups": {group: us / runs / 1000 for group, us in groups.most_common()}}


def profile_engines(bundles: dict[str, Path], texts: list[str], rounds: int = 20,
                    warmup: int = 3) -> dict[str, dict]:
    """Profile each bundle on texts (one call = one batch), rounds rotated; return per engine
    {cpu_ms (median), kernel_ms, nodes, ops {op: {ms, nodes}}, groups {group: ms}} per run."""
    import edge_runtime
    from edge_runtime.model import session_options

    workdir = Path(tempfile.mkdtemp(prefix="edge-op-profile-"))
    models = {}
    try:
        for index, (label, bundle) in enumerate(bundles.items()):
            options = session_options(1)
            options.enable_profiling = True
            options.profile_file_prefix = str(workdir / f"engine{index}")
            models[label] = edge_runtime.load(bundle, options=options)
        for model in models.values():
            for _ in range(warmup):
                model.embed(texts)
        cpu: dict[str, list[float]] = {label: [] for label in models}
        names = list(models)
        for index in range(rounds):
            start = index % len(names)
            for label in names[start:] + names[:start]:
                started = time.thread_time()
                models[label].embed(texts)
                cpu[label].append((time.thread_time() - started) * 1000)
        report = {}
        for label, model in models.items():
            path = Path(model.session.end_profiling())
            report[label] = {"cpu_ms": statistics.median(cpu[label]),
                             **_summarise(json.loads(path.read_text()))}
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def format_profiles(report: dict[str, dict], top: int = 18) -> list[str]:
    """Return text lines: groups then op types per engine, each as its share of the engine's
    kernel time and that share of its CPU ms per call (the profiler's wall-clock kernel times
    swell with other load on a shared machine; their shares and the CPU time do much less)."""
    labels = list(report)
    width = max(15, *(len(label) for label in labels))
    head = f"{'':34s}" + "".join(f"{label[:width]:>{width + 2}s}" for label in labels)

    def row(title: str, cells: list[str]) -> str:
        return f"{title[:34]:34s}" + "".join(f"{cell:>{width + 2}s}" for cell in cells)

    def cell(label: str, ms: float | None, nodes: float | None = None) -> str:
        if ms is None:
            return "-"
        share = ms / (report[label]["kernel_ms"] or 1.0)
        text = f"{share * report[label]['cpu_ms']:.2f} {share:4.0%}"
        return text if nodes is None else f"{text} {nodes:3.0f}"

    lines = [head,
             row("CPU ms per call (median)", [f"{report[k]['cpu_ms']:.2f}" for k in labels]),
             row("kernel ms per run (profiler)", [f"{report[k]['kernel_ms']:.2f}" for k in labels]),
             row("nodes per run", [f"{report[k]['nodes']:.0f}" for k in labels]),
             "by group (CPU ms = kernel share x CPU ms per call, share):"]
    groups = sorted({g for k in labels for g in report[k]["groups"]},
                    key=lambda g: -max(report[k]["groups"].get(g, 0.0) / report[k]["kernel_ms"]
                                       for k in labels))
    for group in groups:
        lines.append(row(f"  {group}", [cell(k, report[k]["groups"].get(group)) for k in labels]))
    lines.append("by op type (CPU ms, share, nodes):")
    ops = sorted({op for k in labels for op in report[k]["ops"]},
                 key=lambda op: -max(report[k]["ops"].get(op, {"ms": 0.0})["ms"] /
                                     report[k]["kernel_ms"] for k in labels))
    for op in ops[:top]:
        lines.append(row(f"  {op}", [cell(k, report[k]["ops"][op]["ms"], report[k]["ops"][op]["nodes"])
                                      if op in report[k]["ops"] else "-" for k in labels]))
    return lines


if __name__ == "__main__":  # pragma: no cover - run through bench_model.py --profile
    raise SystemExit("run: python benchmarks/bench_model.py --profile")
