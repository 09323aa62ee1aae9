"""Measure fixed classify recipes (which ops stay FP32) against ORT FP32 on four text sets.

    .venv/bin/python benchmarks/classify_recipes.py [--fp32 build/models/minilm-classify]
        [--work build/classify-recipes] [--sensitivity] [--bundles] [--every-row]

Every candidate is the default dynamic recipe (SmoothQuant, outlier split, per-row scales,
arch-stable graph) with a different set of ops kept FP32; all share one smoothed graph. Each is
compared with the FP32 export one text per call (top-1 agreement, max and mean |dp|) on the
calibration texts (what the mixed search ranks ops on), the check texts (tests/data/texts.txt,
model.check's default), benchmarks/data/heldout_classify.txt (sentences written before any
measurement, compared across the candidates when the default was chosen) and
benchmarks/data/confirm_classify.txt (written after the choice, to confirm it). FP32's own
margin (top-1 minus top-2 probability) is printed per set: an untrained head has many
near-ties, where any arithmetic change flips labels.
--sensitivity ranks every op as the mixed search does (only that op INT8, calibration texts).
--bundles writes each candidate as a bundle under WORK/bundles/ for `model.bench --also`.
--every-row builds them without the [CLS]-row last layer (edgefleet.model.cls_rows), as the
default was built before it (the same outputs, the last layer's time for every token).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "payload")]

from edgefleet.model.evaluate import DEFAULT_TEXTS, read_texts  # noqa: E402
from edgefleet.model.quantize import (  # noqa: E402
    CALIBRATION_TEXTS,
    Recipe,
    build_graph,
    default_fp32_nodes,
    quantize,
    smoothed_fp32,
    stable_fp32,
)
from edgefleet.model.search import _Evaluator, quantizable_ops, sensitivity  # noqa: E402

HELDOUT = REPO / "benchmarks" / "data" / "heldout_classify.txt"
CONFIRM = REPO / "benchmarks" / "data" / "confirm_classify.txt"


def candidates(ops: list[str]) -> dict[str, tuple[str, ...]]:
    """Return name -> FP32 ops: the head alone, then the head plus parts of the last layers
    (ops in graph order: each layer is QKV, attention output, FFN in, FFN out)."""
    head = tuple(op for op in ops if op.endswith("Gemm"))
    encoder = [op for op in ops if op not in head]
    last, before = encoder[-4:], encoder[-8:-4]
    return {"head only (the default before 2026-12-08 06:00)": head,
            "head + last layer FFN (2)": head + tuple(last[2:]),
            "head + last layer after attention (3)": head + tuple(last[1:]),
            "head + last layer (4)": head + tuple(last),
            "head + last two layers (8)": head + tuple(before + last),
            "mixed search's pick (5)": head + (before[0], before[3], last[0], last[1], last[3])}


def margins(probabilities) -> str:
    import numpy as np

    top = np.sort(probabilities, axis=1)
    margin = top[:, -1] - top[:, -2]
    return (f"FP32 top-1 minus top-2: median {np.median(margin):.3f}, "
            f"{int((margin < 0.02).sum())} of {len(margin)} under 0.02")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", default=str(REPO / "build" / "models" / "minilm-classify"))
    parser.add_argument("--work", default=str(REPO / "build" / "classify-recipes"))
    parser.add_argument("--sensitivity", action="store_true")
    parser.add_argument("--bundles", action="store_true")
    parser.add_argument("--every-row", action="store_true")
    args = parser.parse_args()
    fp32_dir, work = Path(args.fp32), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Recipe()
    assert base.smooth_alpha is not None
    smoothed = work / "smoothed.onnx"
    source = stable_fp32(fp32_dir, work / "stable.onnx")
    smoothed_fp32(fp32_dir, smoothed, base.smooth_alpha, base.outliers, CALIBRATION_TEXTS,
                  base.fold_values, base.outlier_after_bias, source=source)
    sets = {"calibration": read_texts(CALIBRATION_TEXTS), "check": read_texts(DEFAULT_TEXTS),
            "heldout": read_texts(HELDOUT), "confirm": read_texts(CONFIRM)}
    evaluators = {name: _Evaluator(fp32_dir, texts, {}, work) for name, texts in sets.items()}
    for name, evaluator in evaluators.items():
        print(f"{name} ({len(sets[name])} texts): {margins(evaluator.reference)}")
    ops = quantizable_ops(smoothed)
    if args.sensitivity:
        ranked = sensitivity(evaluators["calibration"], smoothed, fp32_dir, work, ops,
                             sets["calibration"])
        print(json.dumps([[op, round(loss, 5)] for op, loss in ranked], indent=0))
    rows = []
    recipes = candidates(ops)
    default = default_fp32_nodes(fp32_dir)
    print("the default recipe keeps FP32: " + next(
        (name for name, nodes in recipes.items() if set(nodes) == set(default)), str(default)))
    for name, fp32_nodes in recipes.items():
        graph = work / "candidate.onnx"
        build_graph(fp32_dir, Recipe(fp32_nodes=fp32_nodes), graph, smoothed,
                    cls_row=not args.every_row)
        row = {"candidate": name, "fp32_nodes": list(fp32_nodes), "bytes": graph.stat().st_size}
        for set_name, evaluator in evaluators.items():
            row[set_name] = evaluator.accuracy(graph).as_dict()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.bundles:
            slug = f"c{len(fp32_nodes)}"
            quantize(fp32_dir, work / "bundles" / slug, name=f"minilm-classify-{slug}",
                     recipe=Recipe(fp32_nodes=fp32_nodes), graph=graph)
    fp32_bytes = (fp32_dir / "model.onnx").stat().st_size
    print("| candidate | FP32 ops | size vs FP32 | " + " | ".join(
        f"{s}: top-1 / max / mean \\|dp\\|" for s in sets) + " |")
    for row in rows:
        cells = [f"{row[s]['top1_agreement']:.3f} / {row[s]['max_prob_diff']:.3f} / "
                 f"{row[s]['mean_prob_diff']:.4f}" for s in sets]
        print(f"| {row['candidate']} | {len(row['fp32_nodes'])} | "
              f"{100 * row['bytes'] / fp32_bytes:.1f}% | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
