"""Build the INT8 graph variants measured against the default in benchmarks/RESULTS.md (issue 20).

    .venv/bin/python benchmarks/build_variants.py [--fp32 DIR] [--out build/bundles] [NAME ...]

Each variant is a bundle `<out>/<NAME>` built from the same export, SmoothQuant calibration and
outlier split as the default; only the graph (arch-stable or fused layer norms), the weight type
and the per-row quantization chain differ:

- fused: ORT's fused layer norms (= `invoke model.quantize --graph fused`);
- fused-tr / stable-tr: per-row rounding by +0.5 and a truncating Cast (no Round node);
- fused-s8rr-tr: signed 7-bit weights (ORT's reduce_range), so that AVX2's fast U8S8 kernel
  does not saturate;
- fused-s8-a7: signed 8-bit weights and 7-bit activations (levels 63, zero point 64), the
  other way to keep U8S8 from saturating;
- fused-mha: the attention core as ORT's FP32 MultiHeadAttention (com.microsoft) over the
  quantized QKV projection, instead of the unfused ops of edgefleet.model.stable (an
  experiment: this script swaps stable's attention builder while it builds).

Time them with `benchmarks/bench_model.py --also <out>/<NAME>` (or `--profile --also ...`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgefleet.model.quantize import Recipe, quantize, smoothed_fp32, stable_fp32  # noqa: E402

VARIANTS = {
    "fused": {"arch_stable": False},
    "fused-tr": {"arch_stable": False, "truncate": True},
    "stable-tr": {"arch_stable": True, "truncate": True},
    "fused-s8rr-tr": {"arch_stable": False, "truncate": True, "weight_type": "QInt8",
                      "reduce_range": True},
    "fused-s8-a7": {"arch_stable": False, "weight_type": "QInt8", "levels": 63,
                    "zero_point": 64},
    "fused-mha": {"arch_stable": False, "attention": "mha"},
}


def _mha_attention(builder, node, init, mask, key_bias=None) -> None:
    """Attention as MatMul(QKV) -> Split -> MultiHeadAttention(q, k, v, bias, key padding mask)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgefleet.model.stable import _attr

    hidden = int(init[node.input[1]].dims[1]) // 3
    name = node.name
    qkv = builder.node("MatMul", [node.input[0], node.input[1]], f"{name}/qkv", f"{name}/qkv_matmul")
    parts = [f"{name}/q", f"{name}/k", f"{name}/v"]
    sizes = builder.const(f"{name}/split", np.array([hidden] * 3, np.int64))
    builder.nodes.append(onnx.helper.make_node("Split", [qkv, sizes], parts, name=f"{name}/split",
                                               axis=-1))
    if not any(item.output[0] == "mha/mask" for item in builder.nodes):
        builder.node("Cast", ["attention_mask"], "mha/mask", "mha/mask_cast",
                     to=onnx.TensorProto.INT32)
    bias = builder.const(f"{name}/qkv_bias",
                         numpy_helper.to_array(init[node.input[2]]).astype(np.float32))
    builder.nodes.append(onnx.helper.make_node(
        "MultiHeadAttention", [*parts, bias, "mha/mask"], [node.output[0]], name=f"{name}/mha",
        domain="com.microsoft", num_heads=int(_attr(node, "num_heads"))))


def build(fp32_dir: Path, out: Path, arch_stable: bool, weight_type: str = "QUInt8",
          reduce_range: bool = False, attention: str = "unfused", **per_row) -> None:
    """Write the bundle out: the default recipe's steps with the variant's settings."""
    import onnx

    from edgefleet.model import stable as stable_module
    from edgefleet.model.graph import quantize_graph
    from edgefleet.model.per_row import per_row_activations

    recipe = Recipe(arch_stable=arch_stable)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        unfused = stable_module._attention
        if attention == "mha":
            stable_module._attention = _mha_attention  # type: ignore[assignment]
        try:
            stable = stable_fp32(fp32_dir, work / "stable.onnx", norms=arch_stable)
        finally:
            stable_module._attention = unfused
        assert recipe.smooth_alpha is not None
        smoothed_fp32(fp32_dir, work / "smoothed.onnx", recipe.smooth_alpha, source=stable)
        quantize_graph(work / "smoothed.onnx", work / "int8.onnx", recipe.per_channel,
                       recipe.fp32_nodes, weight_type=weight_type, reduce_range=reduce_range)
        graph = work / "model.onnx"
        onnx.save(per_row_activations(onnx.load(str(work / "int8.onnx")), **per_row), str(graph))
        result = quantize(fp32_dir, out, name=out.name, recipe=recipe, graph=graph)
    print(f"wrote {result.bundle_dir} ({result.int8_bytes / 1e6:.1f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=REPO / "build/models/all-minilm-l6-v2")
    parser.add_argument("--out", type=Path, default=REPO / "build/bundles")
    parser.add_argument("names", nargs="*", default=list(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}: expected {', '.join(VARIANTS)}")
    if not (args.fp32 / "model.onnx").is_file():
        sys.exit(f"{args.fp32 / 'model.onnx'} missing: run `.venv/bin/invoke model.export` first")
    for name in args.names:
        build(args.fp32, args.out / name, **VARIANTS[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
