"""benchmarks/bench_model.py --profile: per-node ORT time by op type and group, side by side."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import profile_ops  # noqa: E402


def test_profile_groups_the_per_row_chain_and_int8_gemms(tiny):
    bundle = tiny["bundle_dir"]
    report = profile_ops.profile_engines({"ours": bundle, "again": bundle}, ["hello world"] * 2,
                                         rounds=2, warmup=1)
    ours = report["ours"]
    assert ours["cpu_ms"] > 0 and ours["kernel_ms"] > 0 and ours["nodes"] > 10
    # the per-row rewrite's Abs/ReduceMax/Div/Cast chain and the fused INT8 GEMMs are named
    assert {"per-row quantize chain", "INT8 GEMMs"} <= set(ours["groups"])
    assert "MatMulIntegerToFloat" in ours["ops"]
    assert abs(sum(ours["groups"].values()) - ours["kernel_ms"]) < 1e-6 * max(ours["kernel_ms"], 1)
    lines = profile_ops.format_profiles(report)
    assert "ours" in lines[0] and "again" in lines[0]
    assert any(line.strip().startswith("per-row quantize chain") for line in lines)


def test_group_of_names_the_graphs_parts():
    assert profile_ops.group_of("per_row/3/abs", "Abs") == "per-row quantize chain"
    assert profile_ops.group_of("x_quant", "DynamicQuantizeMatMul") == "INT8 GEMMs"
    assert profile_ops.group_of("Attention_0_quant", "QAttention") == "INT8 GEMMs (+ QAttention)"
    assert profile_ops.group_of("Attention_2/exp", "Exp") == "attention core (unfused)"
    assert profile_ops.group_of("/layer.0/output/LayerNorm/Add", "Add") == \
        "layer norms (+ residual Adds)"
    assert profile_ops.group_of("SkipLayerNorm_3", "SkipLayerNormalization") == \
        "layer norms (+ residual Adds)"
