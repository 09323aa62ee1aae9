"""Accuracy against FP32 (PyTorch and ORT) on check inputs, latency per length, a table and a PNG.

    .venv/bin/python benchmarks/check_model.py [--bundle DIR] [--fp32 DIR] [--texts FILE]
        [--threads 1] [--rounds 15] [--plot build/reports/model-check.png | --no-plot]
        [--clock wall|cpu] [--json]

Accuracy: every input run one per call (batch 1) by ORT FP32, naive INT8 and our bundle, each
compared with the bundle's PyTorch source model (FP32, eager) and the INT8 engines also with
ORT FP32, by the bundle's task (edgefleet/model/agreement.py): embed by mean/min cosine and
nearest-neighbour agreement, classify by top-1 agreement and probability difference, qa by
exact span agreement and score difference. Check inputs: texts (one a line, default
tests/data/texts.txt) or, for qa, JSON lines of {"question", "context"} (default
edgefleet/model/data/qa_check.jsonl). Exit status 3 when ours misses the task's target
against PyTorch FP32 (2: bad arguments, 1: a crash).
Latency: batch 1, end to end (tokenize + infer + post-process), interleaved medians per length,
in wall time or (`--clock cpu`, one thread) CPU time of the calling thread (see bench_model.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import bench_model as bm  # noqa: E402
import edge_runtime  # noqa: E402

from edgefleet.model import evaluate as ev  # noqa: E402
from edgefleet.model import task_eval  # noqa: E402
from edgefleet.model.agreement import Target  # noqa: E402

REPO = bm.REPO
LENGTHS = (8, 16, 32, 64, 128, 256)
TARGET_MISSED = 3


def engines(args):
    """Return the source model dir and {name: runtime model} of the three ONNX engines."""
    scratch = REPO / "build" / "bench" / bm.content_hash(args.bundle / "bundle.json")[:16]
    ours = edge_runtime.load(args.bundle, threads=args.threads)  # applies the bundle's session_config
    fp32 = edge_runtime.load(bm.fp32_bundle(args.fp32 / "model.onnx", args.bundle,
                                            scratch / "fp32-bundle"), threads=args.threads)
    naive = edge_runtime.load(bm.fp32_bundle(bm.naive_int8(args.fp32, scratch / "naive-int8.onnx"),
                                             args.bundle, scratch / "naive-bundle"),
                              threads=args.threads)
    return bm.source_dir(args.bundle), {"ort-fp32": fp32, "naive-int8": naive, "ours": ours}


def measure(models: dict, inputs: list, model_dir: Path, target: Target) -> dict:
    """Return each engine's agreement with PyTorch FP32, and the INT8 engines' with ORT FP32,
    each row with meets_target."""
    ours = models["ours"]
    got = {name: task_eval.outputs(model, inputs) for name, model in models.items()}
    references = {"accuracy_vs_pytorch_fp32": task_eval.torch_outputs(model_dir, ours, inputs),
                  "accuracy_vs_ort_fp32": got["ort-fp32"]}
    report: dict = {}
    for key, reference in references.items():
        report[key] = {}
        for name, rows in got.items():
            if key == "accuracy_vs_ort_fp32" and name == "ort-fp32":
                continue
            agreement = task_eval.compare(ours.task, rows, reference)
            report[key][name] = {**agreement.as_dict(), "meets_target": target.met(agreement)}
    return report


def plot(latency: dict, path: Path, title: str) -> None:
    """Write a PNG of median latency vs tokens, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lengths = sorted(latency)
    for name in latency[lengths[0]]:
        ax.plot(lengths, [latency[n][name] for n in lengths], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("tokens (batch 1)")
    ax.set_ylabel("median latency, ms (tokenize + infer + post-process)")
    ax.set_title(f"{title}: end to end latency vs length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, default=None,
                        help="check inputs (default: the task's, see above)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--plot", type=Path, default=REPO / "build/reports/model-check.png")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--clock", choices=sorted(bm.CLOCKS), default="wall")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fp32", type=Path, default=REPO / "build/models/all-minilm-l6-v2")
    parser.add_argument("--bundle", type=Path, default=REPO / "build/bundles/all-minilm-l6-v2-int8")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1: with a pool, CPU time is not latency")
    model_dir, models = engines(args)
    ours, target = models["ours"], Target()
    task = ours.task
    inputs_path = args.texts or task_eval.default_inputs(task)
    try:
        inputs = task_eval.read_inputs(inputs_path, task)
    except (OSError, ValueError) as error:
        parser.error(f"--texts: {error}")
    report = {"task": task, "bundle": str(args.bundle), "source_model": str(model_dir),
              "texts": str(inputs_path), "count": len(inputs), "threads": args.threads,
              "clock": args.clock, "target": target.for_task(task),
              **measure(models, inputs, model_dir, target)}
    report["passed"] = report["accuracy_vs_pytorch_fp32"]["ours"]["meets_target"]
    timed = {"pytorch-fp32": task_eval.torch_caller(model_dir, task, args.threads, ours.max_seq_len,
                                                     ours.meta.get("max_answer_len", 30)),
             **{name: task_eval.caller(model) for name, model in models.items()}}
    latency = {}
    for length in LENGTHS:
        if length <= ours.max_seq_len:
            item = task_eval.timing_input(task, length, ours.tokenizer)
            latency[length] = ev.interleaved_medians(timed, [item], args.rounds,
                                                     clock=bm.CLOCKS[args.clock])
    if not args.no_plot:
        plot(latency, args.plot, ours.meta.get("name", args.bundle.name))
    report["median_ms"] = {n: {k: round(v, 3) for k, v in row.items()} for n, row in latency.items()}
    report["plot"] = None if args.no_plot else str(args.plot)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_tables(report, list(timed), args)
    return 0 if report["passed"] else TARGET_MISSED


METRICS = {"embed": (("mean cos", "mean_cosine", 9, 5), ("min cos", "min_cosine", 8, 4),
                     ("NN agree", "neighbour_agreement", 9, 3)),
           "classify": (("top-1 agree", "top1_agreement", 11, 3), ("max |dp|", "max_prob_diff", 9, 4),
                        ("mean |dp|", "mean_prob_diff", 9, 4)),
           "qa": (("span agree", "span_agreement", 10, 3), ("max |dscore|", "max_score_diff", 12, 4),
                  ("mean |dscore|", "mean_score_diff", 13, 4))}


def print_tables(report: dict, names: list[str], args) -> None:
    """Print the accuracy tables (one per reference), the target and the latency table."""
    columns = METRICS[report["task"]]
    target = ", ".join(f"{key} {value}" for key, value in report["target"].items())
    for key, title in (("accuracy_vs_pytorch_fp32", "FP32 PyTorch"),
                       ("accuracy_vs_ort_fp32", "ORT FP32")):
        print(f"{report['task']} accuracy vs {title}, {report['count']} inputs from "
              f"{report['texts']}, batch 1 (target: {target})")
        print(f"{'engine':<12} " + " ".join(f"{label:>{width}}" for label, _, width, _ in columns)
              + "  meets")
        for name, row in report[key].items():
            print(f"{name:<12} " + " ".join(f"{row[metric]:{width}.{digits}f}"
                                            for _, metric, width, digits in columns)
                  + f"  {'yes' if row['meets_target'] else 'NO'}")
        print()
    print("ours " + ("meets" if report["passed"] else "MISSES") + " the target against FP32 PyTorch")
    print(f"\nmedian ms ({args.clock} clock), batch 1, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds")
    print(f"{'tokens':>6} " + " ".join(f"{n:>12}" for n in names) + "  pytorch/ours")
    for length, row in report["median_ms"].items():
        print(f"{length:>6} " + " ".join(f"{row[n]:12.2f}" for n in names) +
              f"  {row['pytorch-fp32'] / row['ours']:11.2f}x")
    if report["plot"]:
        print(f"\nplot: {report['plot']}")


if __name__ == "__main__":
    raise SystemExit(main())
