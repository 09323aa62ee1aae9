"""model.check / model.bench / recipe search on classify and QA bundles: each task measured
against FP32 (ORT FP32 and the PyTorch source model) with its own agreement metrics and target.

Tiny random BERTs: the mechanics (shapes, sanity, pass/fail), not MiniLM's numbers.
"""

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
from invoke import Config, Context

from edgefleet.tasks import model as tasks

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def _context(tmp_path):
    return Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))


def _check(capsys, paths, *extra) -> tuple[int, dict]:
    """Run benchmarks/check_model.py in this process (imports paid once); return (status, JSON)."""
    import check_model

    status = check_model.main(["--bundle", str(paths["bundle_dir"]), "--fp32",
                               str(paths["fp32_dir"]), "--rounds", "1", "--json", "--no-plot",
                               *extra])
    return status, json.loads(capsys.readouterr().out)


def _negated(bundle_dir: Path, dst: Path) -> Path:
    """Copy a bundle, its graph's task outputs negated: a deliberately broken INT8 bundle."""
    shutil.copytree(bundle_dir, dst)
    model = onnx.load(str(dst / "model.onnx"), load_external_data=False)
    outputs = [item.name for item in model.graph.output]
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if name in outputs else name for name in node.output]
    model.graph.node.extend(onnx.helper.make_node("Neg", [f"{name}_raw"], [name])
                            for name in outputs)
    onnx.save(model, str(dst / "model.onnx"))
    return dst


def test_check_measures_classify_against_fp32(tiny_classify, capsys):
    status, report = _check(capsys, tiny_classify)
    assert report["task"] == "classify" and report["count"] >= 100
    assert report["target"] == {"top1_agreement": 0.99, "max_prob_diff": 0.05}
    ours = report["accuracy_vs_pytorch_fp32"]["ours"]
    assert set(ours) == {"top1_agreement", "max_prob_diff", "mean_prob_diff", "meets_target"}
    assert 0.9 <= ours["top1_agreement"] <= 1.0
    assert 0 <= ours["mean_prob_diff"] <= ours["max_prob_diff"] < 0.1
    fp32 = report["accuracy_vs_pytorch_fp32"]["ort-fp32"]
    assert fp32["top1_agreement"] == 1.0 and fp32["max_prob_diff"] < 1e-4
    assert set(report["accuracy_vs_ort_fp32"]) == {"naive-int8", "ours"}
    assert report["passed"] == ours["meets_target"] and status == (0 if report["passed"] else 3)
    assert set(report["median_ms"]["8"]) == {"pytorch-fp32", "ort-fp32", "naive-int8", "ours"}


def test_check_qa_measures_span_agreement(tiny_qa, capsys):
    status, report = _check(capsys, tiny_qa)
    assert report["task"] == "qa" and report["count"] >= 30
    assert report["target"] == {"span_agreement": 0.95, "max_score_diff": 0.05}
    for reference in ("accuracy_vs_pytorch_fp32", "accuracy_vs_ort_fp32"):
        ours = report[reference]["ours"]
        assert set(ours) == {"span_agreement", "max_score_diff", "mean_score_diff", "meets_target"}
        assert 0.5 <= ours["span_agreement"] <= 1.0
        assert 0 <= ours["mean_score_diff"] <= ours["max_score_diff"] <= 1
    fp32 = report["accuracy_vs_pytorch_fp32"]["ort-fp32"]
    assert fp32["span_agreement"] == 1.0 and fp32["max_score_diff"] < 1e-4
    assert status == (0 if report["passed"] else 3)


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_fp32_as_the_bundle_agrees_fully_and_a_broken_bundle_fails(task_models, task, tmp_path,
                                                                   capsys):
    import bench_model

    from edgefleet.model import task_eval

    paths = task_models[task]
    inputs = task_eval.read_inputs(task_eval.default_inputs(task), task)[:16]
    few = ["--texts", str(tmp_path / "few.txt")]
    (tmp_path / "few.txt").write_text("".join(
        (json.dumps({"question": item[0], "context": item[1]}) if task == "qa" else item) + "\n"
        for item in inputs))
    as_bundle = bench_model.fp32_bundle(paths["fp32_dir"] / "model.onnx", paths["bundle_dir"],
                                        tmp_path / "fp32-as-bundle")
    status, report = _check(capsys, {**paths, "bundle_dir": as_bundle}, *few)
    key, diff = {"classify": ("top1_agreement", "max_prob_diff"),
                 "qa": ("span_agreement", "max_score_diff")}[task]
    same = report["accuracy_vs_ort_fp32"]["ours"]
    assert same[key] == 1.0 and same[diff] == 0.0
    assert status == 0 and report["passed"]

    status, report = _check(capsys, {**paths, "bundle_dir": _negated(paths["bundle_dir"],
                                                                      tmp_path / "broken")}, *few)
    broken = report["accuracy_vs_pytorch_fp32"]["ours"]
    assert broken[key] < 0.5 and not broken["meets_target"]
    assert status == 3 and not report["passed"]


def test_check_embed_reports_cosines_neighbours_and_target(tiny, capsys):
    status, report = _check(capsys, tiny)
    assert report["task"] == "embed"
    assert report["target"] == {"mean_cosine": 0.998, "min_cosine": 0.99}
    ours = report["accuracy_vs_pytorch_fp32"]["ours"]
    assert set(ours) == {"mean_cosine", "min_cosine", "neighbour_agreement", "meets_target"}
    assert report["accuracy_vs_pytorch_fp32"]["ort-fp32"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert status == (0 if report["passed"] else 3)


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_bench_times_task_bundles(task_models, task, capsys):
    import bench_model

    paths = task_models[task]
    assert bench_model.main(["--bundle", str(paths["bundle_dir"]), "--fp32", str(paths["fp32_dir"]),
                             "--threads", "1", "--batch", "1,2", "--rounds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == task
    assert [(row["batch"], row["tokens"]) for row in report["results"]] == (
        [(1, 16), (1, 64)] if task == "qa" else [(1, 16), (1, 64), (2, 16), (2, 64)])
    for row in report["results"]:
        assert set(row["median_ms"]) == {"pytorch-fp32", "ort-fp32", "naive-int8", "ours",
                                         "ours-control"}
        assert all(value > 0 for value in row["median_ms"].values())


@pytest.mark.parametrize("script, exited, code, message", [
    ("check", 0, 0, None),
    ("check", 3, 1, "misses its accuracy target against FP32 PyTorch"),
    ("check", 2, 2, "check_model.py refused its arguments"),
    ("check", 1, 1, "check_model.py failed with exit status 1"),
    ("bench", 0, 0, None),
    ("bench", 2, 1, "bench_model.py failed with exit status 2"),
])
def test_check_and_bench_tasks_map_the_scripts_status(tiny_classify, tmp_path, script, exited,
                                                      code, message):
    """The tasks' seam is c.run: the command line they build, and what a status becomes."""
    from invoke import Exit, MockContext, Result

    bundle, fp32 = str(tiny_classify["bundle_dir"]), str(tiny_classify["fp32_dir"])
    c = MockContext(config=Config(overrides={"edgefleet": {"build_dir": str(tmp_path)}}),
                    run=Result(exited=exited))
    if code:
        with pytest.raises(Exit) as failed:
            getattr(tasks, script)(c, bundle=bundle, fp32=fp32, json=True)
        assert failed.value.code == code and message in str(failed.value.message)
    else:
        getattr(tasks, script)(c, bundle=bundle, fp32=fp32, json=True)
    command = c.run.call_args.args[0]
    assert f"{script}_model.py" in command and "--json" in command
    assert f"--bundle {bundle} --fp32 {fp32}" in command


def test_search_mode_on_a_classify_export(tiny_classify, tmp_path, capsys):
    from edgefleet.model.bundle import verify

    out = tmp_path / "bundle"
    tasks.quantize(_context(tmp_path), model=str(tiny_classify["fp32_dir"]), out=str(out),
                   mode="search", json=True)
    document = json.loads(capsys.readouterr().out)
    searched = document["search"]
    assert searched["task"] == "classify"
    assert searched["target"] == {"top1_agreement": 0.99, "max_prob_diff": 0.05}
    names = {m["name"] for m in searched["candidates"]}
    assert {"dynamic", "dynamic-per-tensor", "static-minmax"} <= names
    for candidate in searched["candidates"]:
        assert 0 <= candidate["top1_agreement"] <= 1 and "mean_cosine" not in candidate
        assert candidate["meets_target"] == (candidate["top1_agreement"] >= 0.99
                                             and candidate["max_prob_diff"] <= 0.05)
    picked = next(m for m in searched["candidates"] if m["name"] == searched["picked"])
    assert verify(out).task == "classify"
    assert verify(out).quantization.fp32_nodes == picked["fp32_nodes"]


def test_a_gemm_named_in_fp32_nodes_stays_fp32(tiny_classify, tmp_path):
    """ORT's quantizer turns a Gemm into <name>_MatMul + Add before it reads nodes_to_exclude,
    so a classify head's Gemm (pooler, classifier) named by its own name was quantized anyway."""
    from edgefleet.model.graph import graph_of, quantize_graph
    from edgefleet.model.search import quantizable_ops

    src = tiny_classify["fp32_dir"] / "model.onnx"
    gemms = [node.name for node in graph_of(src).node if node.op_type == "Gemm"]
    assert len(gemms) == 2 and set(gemms) <= set(quantizable_ops(src))
    quantize_graph(src, tmp_path / "q.onnx", fp32_nodes=gemms)
    quantized = [node.name for node in graph_of(tmp_path / "q.onnx").node
                 if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert quantized and not [name for name in quantized if name.startswith(tuple(gemms))]


def test_bundle_lists_a_gemm_kept_in_fp32(tiny_classify, tmp_path):
    from edgefleet.model.bundle import verify
    from edgefleet.model.quantize import Recipe, quantize

    recipe = Recipe(fp32_nodes=("/inner/classifier/Gemm",))
    quantize(tiny_classify["fp32_dir"], tmp_path / "b", name="t", recipe=recipe)
    assert verify(tmp_path / "b").quantization.fp32_nodes == ["/inner/classifier/Gemm"]


def test_the_default_recipe_keeps_a_classify_heads_gemms_and_last_layers_in_fp32(tiny_classify, tiny_qa,
                                                                                 tmp_path):
    """MiniLM with a classify head: top-1 agreement with FP32 0.976 with only the head's Gemms
    in FP32 (model.check exits 1), 0.992 with the last two encoder layers too (on the check
    texts and on held-out ones), so `model.quantize` keeps those FP32 by default; a 2-layer
    model keeps one (at most half its layers). A QA export is unchanged."""
    from edgefleet.model.bundle import verify

    tasks.quantize(_context(tmp_path), model=str(tiny_classify["fp32_dir"]), out=str(tmp_path / "c"))
    layer = "/inner/bert/encoder/layer.1"
    assert verify(tmp_path / "c").quantization.fp32_nodes == [
        "/inner/bert/pooler/dense/Gemm", "/inner/classifier/Gemm", "Attention_1/qkv_matmul",
        f"{layer}/attention/output/dense/MatMul", f"{layer}/intermediate/dense/MatMul",
        f"{layer}/output/dense/MatMul"]
    tasks.quantize(_context(tmp_path), model=str(tiny_qa["fp32_dir"]), out=str(tmp_path / "q"))
    assert verify(tmp_path / "q").quantization.fp32_nodes == []


def test_a_default_classify_bundle_meets_its_target(tiny_classify, tmp_path, capsys):
    """The user's path: export -> model.quantize (defaults) -> model.check passes."""
    out = tmp_path / "c"
    tasks.quantize(_context(tmp_path), model=str(tiny_classify["fp32_dir"]), out=str(out))
    capsys.readouterr()
    status, report = _check(capsys, {"bundle_dir": out, "fp32_dir": tiny_classify["fp32_dir"]})
    assert status == 0 and report["passed"]
    assert report["accuracy_vs_pytorch_fp32"]["ours"]["top1_agreement"] >= 0.99
