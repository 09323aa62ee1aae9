"""Accuracy against FP32 PyTorch on a text file, latency per length, a table and a PNG plot.

    .venv/bin/python benchmarks/check_model.py [--texts FILE] [--threads 1] [--rounds 15]
        [--plot build/reports/model-check.png] [--clock wall|cpu] [--json]

Accuracy: every text embedded one per call (batch 1) by ORT FP32, naive INT8 and our bundle,
compared with FP32 PyTorch (eager): mean/min cosine and nearest-neighbour agreement.
Latency: batch 1, end to end (tokenize + infer + pool), interleaved medians per length, in
wall time or (`--clock cpu`, one thread) CPU time of the calling thread (see bench_model.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import bench_model as bm  # noqa: E402
import edge_runtime  # noqa: E402
from edgefleet.model import evaluate as ev  # noqa: E402

REPO = bm.REPO
LENGTHS = (8, 16, 32, 64, 128, 256)


def engines(args):
    """Return {name: embed(texts) -> rows} for the four engines, each on args.threads."""
    scratch = REPO / "build" / "bench" / bm.content_hash(args.bundle / "bundle.json")[:16]
    ours = edge_runtime.load(args.bundle, threads=args.threads)  # applies the bundle's session_config
    fp32 = edge_runtime.load(bm.fp32_bundle(args.fp32 / "model.onnx", args.bundle,
                                            scratch / "fp32-bundle"), threads=args.threads)
    naive = edge_runtime.load(bm.fp32_bundle(bm.naive_int8(args.fp32, scratch / "naive-int8.onnx"),
                                             args.bundle, scratch / "naive-bundle"),
                              threads=args.threads)
    model_dir = bm.source_dir(args.bundle)
    return model_dir, ours.max_seq_len, {
        "pytorch-fp32": bm.torch_embedder(model_dir, args.threads),
        "ort-fp32": fp32.embed, "naive-int8": naive.embed, "ours": ours.embed}, ours.tokenizer


def plot(latency: dict, path: Path) -> None:
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
    ax.set_ylabel("median latency, ms (tokenize + infer + pool)")
    ax.set_title("MiniLM-L6 end to end latency vs length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, default=ev.DEFAULT_TEXTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--plot", type=Path, default=REPO / "build/reports/model-check.png")
    parser.add_argument("--clock", choices=sorted(bm.CLOCKS), default="wall")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fp32", type=Path, default=REPO / "build/models/all-minilm-l6-v2")
    parser.add_argument("--bundle", type=Path, default=REPO / "build/bundles/all-minilm-l6-v2-int8")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        sys.exit("--clock cpu needs --threads 1: with a pool, CPU time is not latency")
    texts = ev.read_texts(args.texts)
    model_dir, max_len, engine_map, tokenizer = engines(args)
    reference = ev.torch_reference(model_dir, texts, max_len)
    accuracy = {}
    for name, embed in engine_map.items():
        if name != "pytorch-fp32":
            rows = np.stack([embed([text])[0] for text in texts])
            accuracy[name] = ev.accuracy(rows, reference).as_dict()
    latency = {}
    for length in LENGTHS:
        if length <= max_len:
            text = ev.text_of(length, tokenizer)
            latency[length] = ev.interleaved_medians(engine_map, [text], args.rounds,
                                                     clock=bm.CLOCKS[args.clock])
    plot(latency, args.plot)
    report = {"texts": str(args.texts), "count": len(texts), "threads": args.threads,
              "clock": args.clock,
              "accuracy_vs_pytorch_fp32": accuracy,
              "median_ms": {n: {k: round(v, 3) for k, v in row.items()}
                            for n, row in latency.items()},
              "plot": str(args.plot)}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"accuracy vs FP32 PyTorch, {len(texts)} texts from {args.texts}, batch 1")
    print(f"{'engine':<12} {'mean cos':>9} {'min cos':>8} {'NN agree':>9}")
    for name, row in accuracy.items():
        print(f"{name:<12} {row['mean_cosine']:9.5f} {row['min_cosine']:8.4f} "
              f"{row['neighbour_agreement']:9.3f}")
    names = list(engine_map)
    print(f"\nmedian ms ({args.clock} clock), batch 1, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds")
    print(f"{'tokens':>6} " + " ".join(f"{n:>12}" for n in names) + "  pytorch/ours")
    for length, row in latency.items():
        print(f"{length:>6} " + " ".join(f"{row[n]:12.2f}" for n in names) +
              f"  {row['pytorch-fp32'] / row['ours']:11.2f}x")
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
