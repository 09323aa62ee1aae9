"""The INT8 and FP16 bundles on every execution provider the local onnxruntime offers.

    .venv/bin/python benchmarks/bench_providers.py [--int8 D] [--fp16 D] [--fp32 D] [--rounds 20] [--json]

For each bundle and provider (TensorRT, CUDA, CPU, whichever `onnxruntime.get_available_providers()`
lists): the cold start (session created, first call answered; a TensorRT engine is built here
unless its cache has it), a warm start (the same again: an engine cache hit), batch-1 median
latency at 16/64/128 tokens, and the mean/min cosine against the FP32 export on the check texts.
It is for anyone with a GPU and onnxruntime-gpu: this repository's host has neither, so only the
CPU rows were ever measured here (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "payload"))

import numpy as np  # noqa: E402

ACCELERATORS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
LENGTHS = (16, 64, 128)


def _providers() -> list[str]:
    import onnxruntime as ort

    offered = ort.get_available_providers()
    return [p for p in (*ACCELERATORS, "CPUExecutionProvider") if p in offered]


def _options(provider: str, cache_dir: str) -> dict:
    if provider == "TensorrtExecutionProvider":
        return {provider: {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                           "trt_engine_cache_path": cache_dir}}
    return {}


def _start(bundle: Path, provider: str, cache_dir: str):
    import edge_runtime

    t0 = time.perf_counter()
    model = edge_runtime.load(bundle, providers=[provider, "CPUExecutionProvider"],
                              provider_options=_options(provider, cache_dir), profile_nodes=True)
    model.embed(["a first call"])
    return model, (time.perf_counter() - t0) * 1000


def _latency(model, rounds: int) -> dict[int, float]:
    from edgefleet.model.evaluate import text_of

    out = {}
    for length in LENGTHS:
        text = [text_of(length, model.tokenizer)]
        model.embed(text)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model.embed(text)
            times.append((time.perf_counter() - t0) * 1000)
        out[length] = float(np.median(times))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bundles = REPO / "build" / "bundles"
    parser.add_argument("--int8", type=Path, default=bundles / "all-minilm-l6-v2-int8")
    parser.add_argument("--fp16", type=Path, default=bundles / "all-minilm-l6-v2-fp16")
    parser.add_argument("--fp32", type=Path, default=REPO / "build" / "models" / "all-minilm-l6-v2",
                        help="the FP32 export (model.export): the accuracy reference")
    parser.add_argument("--texts", type=Path, default=REPO / "tests" / "data" / "texts.txt")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from edgefleet.model.evaluate import ort_embed, ort_session, read_texts

    texts = read_texts(args.texts)
    reference = ort_embed(ort_session(args.fp32 / "model.onnx"), Tokenizer.from_file(str(args.fp32 / "tokenizer.json")),
                          texts)
    rows = []
    for name, bundle in (("int8", args.int8), ("fp16", args.fp16)):
        if not (bundle / "bundle.json").is_file():
            print(f"skipping {name}: no bundle at {bundle}", file=sys.stderr)
            continue
        for provider in _providers():
            with tempfile.TemporaryDirectory(prefix="bench-providers-") as cache:
                model, cold_ms = _start(bundle, provider, cache)
                active = model.session.get_providers()
                _, warm_ms = _start(bundle, provider, cache)
                # one text a call, as the device serves them (dynamic INT8 differs in a padded batch)
                cosines = (np.vstack([model.embed([t]) for t in texts]) * reference).sum(axis=1)
                rows.append({"bundle": name, "provider": provider, "active": active,
                             "node_share": model.node_share, "cold_start_ms": round(cold_ms, 1),
                             "warm_start_ms": round(warm_ms, 1),
                             "median_ms": {str(k): round(v, 3) for k, v in _latency(model, args.rounds).items()},
                             "mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min())})
    if args.json:
        print(json.dumps({"providers_offered": _providers(), "rows": rows}, indent=1))
        return 0
    print(f"providers offered here: {', '.join(_providers())}")
    print(f"{'bundle':6s} {'provider':28s} {'cold ms':>8s} {'warm ms':>8s} "
          + " ".join(f"{f'{n} tok':>8s}" for n in LENGTHS) + f" {'mean cos':>10s} {'min cos':>10s}")
    for r in rows:
        print(f"{r['bundle']:6s} {r['provider']:28s} {r['cold_start_ms']:8.1f} {r['warm_start_ms']:8.1f} "
              + " ".join(f"{r['median_ms'][str(n)]:8.2f}" for n in LENGTHS)
              + f" {r['mean_cosine']:10.7f} {r['min_cosine']:10.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
