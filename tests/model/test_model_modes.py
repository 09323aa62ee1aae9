"""Quantization modes on the tiny random BERT: static (calibrated QDQ), mixed precision and the
candidate search with its table and JSON; the mechanics, not MiniLM's numbers."""

import json
from collections import Counter

import edge_runtime
import numpy as np
import onnx
import pytest
from invoke import Config, Context, Exit
from tokenizers import Tokenizer

from edgefleet.model import search as se
from edgefleet.model.bundle import model_bytes, verify
from edgefleet.model.calibrate import TextCalibrationReader
from edgefleet.model.evaluate import Accuracy
from edgefleet.model.quantize import Recipe, quantize
from edgefleet.tasks import model as tasks

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "what is an edge device?",
         "int8 onnx model on a small arm board", "a", "data data data test"]


@pytest.mark.parametrize("method, calibration, ok", [
    ("dynamic", None, True), ("static", "minmax", True), ("static", "entropy", True),
    ("static", "percentile", True), ("static", None, False), ("dynamic", "minmax", False),
    ("static", "kl", False), ("float16", None, False),
])
def test_recipe_checks_method_and_calibration(method, calibration, ok):
    if ok:
        assert Recipe(method=method, calibration=calibration).settings()["method"] == method
    else:
        with pytest.raises(ValueError):
            Recipe(method=method, calibration=calibration)


@pytest.mark.parametrize("pad, lengths", [(False, {4, 11, 1 + 2}), (True, {11})])
def test_calibration_reader_feeds_each_text_once_then_rewinds(tiny, pad, lengths):
    tokenizer = Tokenizer.from_file(str(tiny["fp32_dir"] / "tokenizer.json"))
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    reader = TextCalibrationReader(tokenizer, texts, ["input_ids", "attention_mask"], pad=pad)
    feeds = list(iter(reader.get_next, None))
    assert len(feeds) == 3 and set(feeds[0]) == {"input_ids", "attention_mask"}
    assert {f["input_ids"].shape[1] for f in feeds} == lengths
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["input_ids"].shape[0] == 1


def _cosines(bundle_dir, fp32_dir):
    from edgefleet.model.evaluate import accuracy, ort_embed, ort_session

    tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    reference = ort_embed(ort_session(fp32_dir / "model.onnx"), tokenizer, TEXTS)
    model = edge_runtime.load(bundle_dir)
    return accuracy(np.stack([model.embed([t])[0] for t in TEXTS]), reference)


@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_static_bundle_runs_with_fixed_activation_scales(tiny, tmp_path, calibration):
    from edge_runtime.selftest import selftest

    out = tmp_path / "static"
    quantize(tiny["fp32_dir"], out, name="tiny-static",
             recipe=Recipe(method="static", calibration=calibration))
    bundle = verify(out)
    assert (bundle.quantization.method, bundle.quantization.calibration_method) == (
        "static", calibration)
    ops = Counter(node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node)
    # every weight MatMul static (QDQ: fixed scales), the attention's QKV projection too (the
    # arch-stable graph has no fused Attention); its means and attention core stay FP32
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 4 and ops["QAttention"] == 0
    feeders = _matmul_feeders(out / "model.onnx")
    assert len(feeders) == 8 and {n.op_type for n in feeders} == {"DequantizeLinear"}
    acc = _cosines(out, tiny["fp32_dir"])
    assert acc.mean > 0.99 and acc.min > 0.97
    assert selftest(edge_runtime.load(out), runs=1).passed


def _matmul_feeders(path):
    """Return the node feeding each (non-outlier, non-exact) MatMul's activation input."""
    from edgefleet.model.stable import EXACT_SUFFIX

    graph = onnx.load(str(path)).graph
    producer = {output: node for node in graph.node for output in node.output}
    return [producer[n.input[0]] for n in graph.node if n.op_type == "MatMul" and
            not n.name.endswith(("_outlier_matmul", EXACT_SUFFIX))]


def test_mixed_recipe_keeps_named_ops_in_fp32(tiny, tmp_path):
    from edgefleet.model.quantize import stable_fp32

    # names of the graph that is quantized: the arch-stable one (QKV projection as a MatMul)
    ops = se.quantizable_ops(stable_fp32(tiny["fp32_dir"], tmp_path / "stable.onnx"))
    assert len(ops) == 8  # 2 layers: QKV + 3 MatMuls each
    keep = tuple(sorted(ops[:3]))
    quantize(tiny["fp32_dir"], tmp_path / "mixed", recipe=Recipe(fp32_nodes=keep))
    graph = onnx.load(str(tmp_path / "mixed" / "model.onnx")).graph
    float_ops = {n.name for n in graph.node if n.op_type in ("MatMul", "Attention")}
    assert set(keep) <= float_ops
    assert verify(tmp_path / "mixed").quantization.fp32_nodes == list(keep)



def test_recipe_rewrite_switches_reach_the_graph_and_the_key(tiny, tmp_path):
    from edgefleet.model.quantize import quantize_key

    quantize(tiny["fp32_dir"], tmp_path / "plain", recipe=Recipe(fold_values=False))
    graph = onnx.load(str(tmp_path / "plain" / "model.onnx")).graph
    smooth_muls = [n.name for n in graph.node
                   if n.name.endswith("attention/output/dense/MatMul_smooth")]
    assert len(smooth_muls) == 2  # one per layer: the scale is not folded into V
    assert quantize_key(tiny["fp32_dir"], Recipe(fold_values=False)) != \
        quantize_key(tiny["fp32_dir"], Recipe())
    assert quantize_key(tiny["fp32_dir"], Recipe(outlier_after_bias=False)) != \
        quantize_key(tiny["fp32_dir"], Recipe())

@pytest.mark.parametrize("n, needed", [(8, 1), (8, 2), (8, 3), (8, 5), (8, 8), (8, 9), (1, 1),
                                       (24, 13)])
def test_mixed_finds_fewest_fp32_ops_by_doubling_and_bisection(n, needed):
    """A fake build where keeping >= `needed` of the ranked ops in FP32 meets the target
    (the all-INT8 start, k = 0, has failed before _mixed runs)."""
    ranked = [f"op{i}" for i in range(n)]
    built = []

    def build(recipe):
        k = len(recipe.fp32_nodes)
        assert recipe.fp32_nodes == tuple(sorted(ranked[:k]))  # the k most sensitive
        built.append(k)
        return se.Measured("x", recipe, None, 0, 0.0, Accuracy(np.ones(1), 1.0), k >= needed)

    se._mixed(build, Recipe(), ranked)
    if needed > n:
        assert max(built) == n  # tried everything in FP32, nothing met
    else:
        assert min(k for k in built if k >= needed) == needed  # the fewest was built
        assert needed == 1 or needed - 1 in built  # and one fewer was seen to fail
    assert len(built) <= 2 * n.bit_length() + 1


def test_search_measures_candidates_and_picks_fastest_meeting_target(tiny, tmp_path):
    target = se.Target(min_cosine=0.9999, mean_cosine=0.99995)
    result = se.search(tiny["fp32_dir"], tmp_path / "work", TEXTS, target, rounds=3,
                       methods=("minmax",), log=lambda line: None)
    names = {m.name for m in result.candidates}
    assert {"dynamic", "dynamic-per-tensor", "static-minmax"} <= names
    assert [op for op, _ in result.sensitivity] and len(result.sensitivity) == 8
    losses = [loss for _, loss in result.sensitivity]
    assert losses == sorted(losses, reverse=True)
    meeting = [m for m in result.candidates if m.meets]
    assert meeting and result.picked in meeting
    assert result.picked.latency_ms == min(m.latency_ms for m in meeting)
    for m in result.candidates:
        assert m.meets == (m.accuracy.min >= 0.9999 and m.accuracy.mean >= 0.99995)
        assert m.latency_ms > 0 and m.graph.is_file()
    mixed = [m for m in meeting if m.recipe.fp32_nodes]
    if not result.candidates[0].meets:  # the mixed search ran and found a smallest k
        fewest = min(len(m.recipe.fp32_nodes) for m in mixed)
        smaller = [m for m in result.candidates if m.recipe.method == "dynamic"
                   and m.recipe.per_channel and len(m.recipe.fp32_nodes) == fewest - 1]
        assert fewest == 1 or (smaller and not smaller[0].meets)
    document = se.as_json(result)
    assert document["picked"] == result.picked.name
    assert json.loads(json.dumps(document))["candidates"][0]["size_vs_fp32"] > 0


def test_quantize_task_search_json_writes_the_pick(tiny, tmp_path, capsys):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    out = tmp_path / "bundle"
    tasks.quantize(c, model=str(tiny["fp32_dir"]), out=str(out), name="tiny-mixed",
                   mode="mixed", texts=str(_texts_file(tmp_path)), min_cosine=0.9999,
                   mean_cosine=0.99995, json=True)
    document = json.loads(capsys.readouterr().out)  # stdout is one JSON document
    searched = document["search"]
    picked = next(m for m in searched["candidates"] if m["name"] == searched["picked"])
    assert picked["meets_target"]
    assert not any(m["method"] == "static" for m in searched["candidates"])
    bundle = verify(out)
    assert bundle.quantization.fp32_nodes == picked["fp32_nodes"]
    assert document["quantization"]["fp32_nodes"] == picked["fp32_nodes"]
    assert document["model_bytes"] == model_bytes(out) > (out / "model.onnx").stat().st_size  # graph + weights
    assert (tmp_path / "build" / "reports" / "quantize-bundle.json").is_file()
    assert not (tmp_path / "build" / "cache" / "quantize-mixed-bundle").exists()


def test_quantize_task_static_json(tiny, tmp_path, capsys):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    tasks.quantize(c, model=str(tiny["fp32_dir"]), out=str(tmp_path / "b"), mode="static",
                   calibration="entropy", json=True)
    document = json.loads(capsys.readouterr().out)
    assert document["search"] is None and 0 < document["size_vs_fp32"] < 1
    assert document["quantization"]["calibration_method"] == "entropy"


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fast"}, "--mode"), ({"mode": "static", "calibration": "kl"}, "--calibration"),
    ({"calibration_texts": "nope.txt"}, "--calibration-texts"),
    ({"graph": "fast"}, "--graph"), ({"graph": "fused", "mode": "search"}, "--graph fused"),
])
def test_quantize_task_rejects_bad_options(tiny, tmp_path, kwargs, message):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    with pytest.raises(Exit, match=message) as refused:
        tasks.quantize(c, model=str(tiny["fp32_dir"]), out=str(tmp_path / "b"), **kwargs)
    assert refused.value.code == 2  # a usage error


def test_quantize_task_graph_choice(tiny, tmp_path, capsys):
    """--graph fused keeps ORT's fused layer norms, the default arch-stable graph has none; both
    unfuse the attention (QAttention takes per-tensor scales only: batch-dependent)."""
    import onnx

    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    ops = {}
    for graph in ("arch-stable", "fused"):
        out = tmp_path / graph
        tasks.quantize(c, model=str(tiny["fp32_dir"]), out=str(out), graph=graph, json=True)
        capsys.readouterr()
        ops[graph] = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert "LayerNormalization" in ops["fused"] and "LayerNormalization" not in ops["arch-stable"]
    assert not {"QAttention", "DynamicQuantizeLinear"} & (ops["fused"] | ops["arch-stable"])


def _texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_static_mode_for_task_heads(task_models, tmp_path, task):
    """Static QDQ works on graphs with heads too; the goldens come from the static bundle."""
    from edge_runtime.selftest import selftest

    out = tmp_path / task
    quantize(task_models[task]["fp32_dir"], out,
             recipe=Recipe(method="static", calibration="minmax"))
    bundle = verify(out)
    assert bundle.task == task and bundle.quantization.method == "static"
    assert selftest(edge_runtime.load(out), runs=1).passed
