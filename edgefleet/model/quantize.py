"""Quantize an exported FP32 model to INT8 (a Recipe) and write a bundle with golden outputs."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgefleet.model.bundle import BUNDLE_JSON, WEIGHTS_FILE, Bundle, externalize_weights, model_bytes, parse_bundle
from edgefleet.model.calibrate import CALIBRATION_METHODS, quantize_static_graph
from edgefleet.model.export import EXPORT_META, SESSION_CONFIG_UNFUSED, read_meta
from edgefleet.model.files import atomic_dir, file_record, inputs_digest
from edgefleet.model.graph import WEIGHT_TYPE, graph_of, outlier_counts, quantize_graph, readers_of
from edgefleet.model.per_row import PER_ROW_SUFFIX

__all__ = ["QuantizeResult", "Recipe", "quantize", "quantize_key", "bundle_name",
           "build_graph", "default_fp32_nodes", "GOLDEN_TEXTS", "MIN_COSINE"]

# Short, varied sentences: the device's health gate embeds these and compares with the host.
GOLDEN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Edge devices run quantized models at low power.",
    "ONNX Runtime executes INT8 matrix multiplications on ARM64 cores.",
    "It is raining in Berlin today, 12 degrees.",
    "A cat sat on the mat.",
    "Was kostet ein Kaffee?",
    "error: connection refused on port 8080",
]
# QA bundles' goldens: question/context pairs (the answer is a span of the context).
GOLDEN_QA = [
    ("What runs on the board?", "The edge board runs a quantized BERT model with ONNX Runtime."),
    ("Where is it raining?", "It is raining in Berlin today, 12 degrees, and sunny in Rome."),
    ("Who sat on the mat?", "A cat sat on the mat while the dog slept by the door."),
    ("Which port refused the connection?", "error: connection refused on port 8080 after 3 "
                                           "retries; port 9090 answered."),
]
# Classify and QA goldens hold probabilities (label scores, span score): the device must give
# the same label or span, each probability within this of the host's.
MAX_ABS_DIFF = 0.02
# The golden outputs come from this same INT8 bundle run by edge_runtime on the host, so a
# device differs from them only by kernel-level arithmetic (x86 VNNI vs ARM SDOT, thread
# splits, activation rounding); a wrong model, tokenizer or pooling gives cosines far below.
MIN_COSINE = 0.999
# Measured on MiniLM-L6 against FP32 PyTorch on tests/data/texts.txt (126 texts; calibration on
# a separate file): dynamic per-channel QInt8 alone gives mean cosine 0.991; SmoothQuant (alpha
# 0.8) 0.996; splitting the few outlier input channels of the FFN MatMuls into a small exact
# FP32 path (4 for the FFN output, 2 for the FFN input MatMul) 0.9983, with every big MatMul in
# INT8. Keeping the FFN output MatMuls of layers 0-2 in FP32 instead reached the same accuracy
# slower and larger (see benchmarks/RESULTS.md). FP32_NODES stays available for graphs that need it.
SMOOTH_ALPHA = 0.8
OUTLIER_CHANNELS = {r"/layer\.\d+/output/dense/MatMul$": 4,
                    r"/layer\.\d+/intermediate/dense/MatMul$": 2}
FP32_NODES: tuple[str, ...] = ()
# The two node-saving rewrites of edgefleet.model.smooth (exact in real arithmetic).
FOLD_VALUES = True
OUTLIER_AFTER_BIAS = True
# FP32 parts as ops that give the same bits on x86 and arm64 (edgefleet.model.stable)
ARCH_STABLE = True
# Dynamic INT8 activations scaled per row (per token), not per tensor: a text's result does not
# depend on the other texts in its batch (edgefleet.model.per_row); measured more accurate too.
PER_ROW = True
CALIBRATION_TEXTS = Path(__file__).resolve().parent / "data" / "calibration.txt"


# A classify export's default FP32 ops: its head's Gemms (pooler, classifier) and every
# quantizable op of its last CLASSIFY_FP32_LAYERS encoder layers (at most half of its layers).
# MiniLM-L6 with an (untrained) 3-label head, top-1 agreement with FP32 on the 126 check texts
# / 119 held-out texts: head in INT8 0.675; head FP32 0.976 / 0.975 (misses 0.99); plus the last
# layer 0.984 / 0.983; plus the last two 0.992 / 0.992, mean |dp| lowest of the candidates on
# both sets; the mixed search's 7 ops (chosen on the check texts) 0.992 / 0.983. Embed and QA
# meet their targets with everything in INT8 and keep FP32_NODES (benchmarks/RESULTS.md).
CLASSIFY_FP32_LAYERS = 2


def default_fp32_nodes(fp32_dir: Path) -> tuple[str, ...]:
    """Return the ops the default recipe keeps FP32 for the export at fp32_dir: FP32_NODES, and
    for a classify export its head's Gemms and its last encoder layers' ops (see above)."""
    if read_meta(fp32_dir).get("task") != "classify":
        return FP32_NODES
    graph = graph_of(fp32_dir / "model.onnx")
    nodes = list(graph.node)
    layers = encoder_layers(nodes, {item.name for item in graph.initializer if len(item.dims) == 2})
    count = min(CLASSIFY_FP32_LAYERS, len(layers) // 2)
    kept = [op for index in sorted(layers)[len(layers) - count:] for op in layers[index]]
    return FP32_NODES + tuple(n.name for n in nodes if n.op_type == "Gemm") + tuple(kept)


def encoder_layers(nodes, weights: set[str]) -> dict[int, list[str]]:
    """Return the quantizable ops (MatMul, Attention with a weight among weights) of an export's
    graph by encoder layer index, in graph order.

    MatMuls carry their layer in their name (/layer.<i>/); a fused Attention node (Attention_<n>)
    belongs to the layer of the MatMul that reads its output, and the arch-stable graph, which
    is what gets quantized, calls its QKV MatMul <name>/qkv_matmul (edgefleet.model.stable).
    """
    def layer_of(name: str) -> int | None:
        found = re.search(r"/layer\.(\d+)/", name)
        return int(found.group(1)) if found else None

    readers = readers_of(nodes)
    layers: dict[int, list[str]] = {}
    for node in nodes:
        if node.op_type == "Attention":
            index = next((layer_of(r.name) for r in readers.get(node.output[0], [])
                          if layer_of(r.name) is not None), None)
            name = f"{node.name}/qkv_matmul"
        else:
            index, name = layer_of(node.name), node.name
        if (node.op_type in ("MatMul", "Attention") and index is not None
                and len(node.input) > 1 and node.input[1] in weights):
            layers.setdefault(index, []).append(name)
    return layers


@dataclass(frozen=True)
class Recipe:
    """How to quantize: dynamic or static (calibrated QDQ) INT8, which nodes stay FP32.

    Mixed precision is a recipe with fp32_nodes (edgefleet.model.search picks them).
    """

    method: str = "dynamic"
    calibration: str | None = None  # static only: minmax, entropy or percentile
    per_channel: bool = True
    fp32_nodes: tuple[str, ...] = FP32_NODES
    smooth_alpha: float | None = SMOOTH_ALPHA
    outliers: dict[str, int] | None = field(default=None, hash=False)
    fold_values: bool = FOLD_VALUES
    outlier_after_bias: bool = OUTLIER_AFTER_BIAS
    arch_stable: bool = ARCH_STABLE
    per_row: bool = PER_ROW

    def __post_init__(self):
        if self.method not in ("dynamic", "static"):
            raise ValueError(f"quantization method {self.method!r}: expected dynamic or static")
        if (self.method == "static") != (self.calibration in CALIBRATION_METHODS):
            raise ValueError(f"calibration {self.calibration!r}: static needs one of "
                             f"{', '.join(CALIBRATION_METHODS)}, dynamic none")

    def settings(self) -> dict:
        """Return the recipe as plain data (for cache keys and reports)."""
        data = asdict(self)
        data["fp32_nodes"] = list(self.fp32_nodes)
        data["outliers"] = OUTLIER_CHANNELS if self.outliers is None else self.outliers
        return data


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` wrote: the bundle directory, its validated metadata and sizes."""

    bundle_dir: Path
    bundle: Bundle
    fp32_bytes: int
    int8_bytes: int
    seconds: float


def bundle_name(source_name: str, suffix: str = "int8") -> str:
    """Return a bundle name like all-minilm-l6-v2-int8 from a model name."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", source_name.rsplit("/", 1)[-1].lower()).strip("-.")
    return f"{slug or 'model'}-{suffix}"


def quantize_key(fp32_dir, recipe: Recipe = Recipe(), min_cosine: float = MIN_COSINE,
                 calibration_texts: Path = CALIBRATION_TEXTS) -> str:
    """Hash everything the bundle depends on: FP32 files, recipe, ORT version, golden texts."""
    import onnxruntime

    fp32_dir = Path(fp32_dir)
    files = [fp32_dir / "model.onnx", fp32_dir / "tokenizer.json", fp32_dir / EXPORT_META,
             Path(calibration_texts)]
    settings = {"recipe": recipe.settings(), "min_cosine": min_cosine, "golden": GOLDEN_TEXTS,
                "golden_qa": GOLDEN_QA, "max_abs_diff": MAX_ABS_DIFF,
                "onnxruntime": onnxruntime.__version__, "format": 6}
    if read_meta(fp32_dir).get("task") == "classify":
        settings["cls_row_last_layer"] = True  # build_graph: cls_rows (other tasks' keys unchanged)
    return inputs_digest(files, settings)


def _golden(bundle_dir: Path, min_cosine: float) -> dict:
    import edge_runtime
    from edge_runtime.golden import expected

    model = edge_runtime.load(bundle_dir)
    # One input per call; the device's selftest checks them alone and as one batch.
    if model.task == "qa":
        return expected(model, GOLDEN_QA, MAX_ABS_DIFF)
    return expected(model, GOLDEN_TEXTS, min_cosine if model.task == "embed" else MAX_ABS_DIFF)


def _document(meta: dict, name: str, recipe: Recipe, tmp: Path, key: str,
              fp32_nodes: list[str], split: dict[str, int], calibration_texts: Path) -> dict:
    from importlib.metadata import version

    import onnxruntime

    task = meta.get("task", "embed")
    heads = {"embed": {"pooling": "mean", "normalize": True},
             "classify": {"labels": meta.get("labels")},
             "qa": {"max_answer_len": meta.get("max_answer_len")}}[task]
    return {
        "format": 1, "name": name, "task": task, "max_seq_len": meta["max_seq_len"],
        "inputs": meta["inputs"], "outputs": meta["outputs"], **heads,
        "source_model": meta["source_model"],
        "quantization": {"method": recipe.method, "weight_type": WEIGHT_TYPE,
                         "per_channel": recipe.per_channel,
                         "activation_scales": activation_scales(tmp / "model.onnx"),
                         "onnxruntime": onnxruntime.__version__,
                         "smooth_alpha": recipe.smooth_alpha,
                         "calibration_texts": (Path(calibration_texts).name if
                                               recipe.smooth_alpha or recipe.calibration
                                               else None),
                         "calibration_method": recipe.calibration,
                         "fp32_nodes": fp32_nodes, "outlier_channels": split},
        "session_config": ({} if meta.get("skip_layer_norm", True) else
                           dict(SESSION_CONFIG_UNFUSED)),
        "files": {f: file_record(tmp / f) for f in ("model.onnx", WEIGHTS_FILE, "tokenizer.json")
                  if (tmp / f).is_file()},
        "created_by": f"edgefleet {version('edgefleet')}", "inputs_sha256": key,
    }


def activation_scales(path: Path) -> str:
    """Return how the INT8 graph at path scales its dynamic activations: per-row, per-tensor,
    mixed (fused ops that take one scale per tensor), or static / none."""
    nodes = list(graph_of(path).node)
    per_tensor = any(node.op_type == "DynamicQuantizeLinear" for node in nodes)
    per_row = any(node.name.endswith(PER_ROW_SUFFIX) for node in nodes)
    if per_tensor or per_row:
        return "mixed" if per_tensor and per_row else "per-tensor" if per_tensor else "per-row"
    return "static" if any(node.op_type == "QuantizeLinear" for node in nodes) else "none"


def smoothed_fp32(fp32_dir: Path, dst: Path, alpha: float,
                  outliers: dict[str, int] | None = None,
                  calibration_texts: Path = CALIBRATION_TEXTS, fold_values: bool = FOLD_VALUES,
                  outlier_after_bias: bool = OUTLIER_AFTER_BIAS,
                  source: Path | None = None) -> dict[str, int]:
    """Write dst: the FP32 graph (source, default the export's) with SmoothQuant scales (and
    outlier paths) calibrated on calibration_texts (rewrites as edgefleet.model.smooth.smooth);
    return the outlier channel count per node."""
    import onnx
    from tokenizers import Tokenizer

    from edgefleet.model.evaluate import read_texts
    from edgefleet.model.smooth import activation_absmax, resolve_outliers, smooth

    tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    source = Path(source) if source else fp32_dir / "model.onnx"
    absmax = activation_absmax(source, tokenizer, read_texts(calibration_texts))
    model = onnx.load(str(source))
    split = resolve_outliers([node.name for node in model.graph.node if node.op_type == "MatMul"],
                             OUTLIER_CHANNELS if outliers is None else outliers)
    onnx.save(smooth(model, absmax, alpha, outliers=split, fold_values=fold_values,
                     outlier_after_bias=outlier_after_bias), str(dst))
    return split


def stable_fp32(fp32_dir: Path, dst: Path, norms: bool = True) -> Path:
    """Write dst: the export's FP32 graph with arch-stable ops (edgefleet.model.stable); with
    norms=False only the attention is unfused (ORT's fused layer norms stay)."""
    import onnx

    from edgefleet.model.stable import stabilize

    onnx.save(stabilize(onnx.load(str(Path(fp32_dir) / "model.onnx")), norms=norms), str(dst))
    return Path(dst)


def cls_row_fp32(src: Path, dst: Path) -> Path | None:
    """Write dst: the FP32 classify graph at src with its last layer on the [CLS] row after the
    attention (edgefleet.model.cls_rows); return None (nothing written) where it does not apply."""
    import onnx

    from edgefleet.model.cls_rows import cls_row_last_layer

    model = cls_row_last_layer(onnx.load(str(src)))
    if model is None:
        return None
    onnx.save(model, str(dst))
    return Path(dst)


def per_row_graph(path: Path) -> None:
    """Rewrite the INT8 graph at path in place with per-row activation scales."""
    import onnx

    from edgefleet.model.per_row import per_row_activations

    onnx.save(per_row_activations(onnx.load(str(path))), str(path))


def build_graph(fp32_dir: Path, recipe: Recipe, dst: Path, smoothed: Path | None = None,
                calibration_texts: Path = CALIBRATION_TEXTS, cls_row: bool = True) -> dict[str, int]:
    """Write dst: the INT8 graph of recipe; return the outlier channels split per node.

    cls_row=False keeps a classify graph's last layer on every row (for comparison only).

    smoothed may name an already smoothed FP32 graph (smoothed_fp32 with the same alpha and
    outliers) so that several recipes share one calibration run.
    """
    from tokenizers import Tokenizer

    from edgefleet.model.evaluate import read_texts

    fp32_dir, dst = Path(fp32_dir), Path(dst)
    src, split, scratch = fp32_dir / "model.onnx", {}, []
    # the fused graph keeps ORT's layer norms but, for per-row scales, not its QAttention (which
    # takes one activation scale per tensor: a batch-dependent result)
    if (recipe.arch_stable or recipe.per_row) and smoothed is None:
        src = stable_fp32(fp32_dir, dst.with_name(dst.name + ".stable.onnx"),
                          norms=recipe.arch_stable)
        scratch.append(src)
    if recipe.smooth_alpha:
        if smoothed is None:
            stable, src = src, dst.with_name(dst.name + ".smoothed.onnx")
            scratch.append(src)
            split = smoothed_fp32(fp32_dir, src, recipe.smooth_alpha, recipe.outliers,
                                  calibration_texts, recipe.fold_values,
                                  recipe.outlier_after_bias, source=stable)
        else:
            src = smoothed
            split = outlier_counts(src)
    try:
        if recipe.method == "static":
            assert recipe.calibration is not None  # Recipe.__post_init__: static names a method
            tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
            quantize_static_graph(src, dst, tokenizer, read_texts(calibration_texts),
                                  recipe.calibration, recipe.per_channel, recipe.fp32_nodes)
        else:
            # after SmoothQuant's calibration, which must see every token's activations; exact
            # with per-row scales only (a per-tensor scale would be taken over one row)
            if cls_row and recipe.per_row and read_meta(fp32_dir).get("task") == "classify":
                sliced = cls_row_fp32(src, dst.with_name(dst.name + ".cls.onnx"))
                if sliced is not None:
                    src = sliced
                    scratch.append(sliced)
            quantize_graph(src, dst, recipe.per_channel, recipe.fp32_nodes)
            if recipe.per_row:
                per_row_graph(dst)
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)
    return split


def quantize(fp32_dir, out_dir, name: str | None = None, recipe: Recipe = Recipe(),
             min_cosine: float = MIN_COSINE, graph: Path | None = None,
             calibration_texts: Path = CALIBRATION_TEXTS) -> QuantizeResult:
    """Write out_dir (atomically): INT8 model.onnx, tokenizer.json, bundle.json with golden.

    graph may name an INT8 graph already built from recipe (build_graph); it is copied.
    """
    started = time.perf_counter()
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    meta = json.loads((fp32_dir / EXPORT_META).read_text())
    name = name or bundle_name(meta["source_model"]["name"])
    key = quantize_key(fp32_dir, recipe, min_cosine, calibration_texts)
    with atomic_dir(out_dir) as tmp:
        if graph is None:
            split = build_graph(fp32_dir, recipe, tmp / "model.onnx",
                                calibration_texts=calibration_texts)
        else:
            shutil.copyfile(graph, tmp / "model.onnx")
            split = outlier_counts(tmp / "model.onnx") if recipe.smooth_alpha else {}
        externalize_weights(tmp / "model.onnx")
        present = {n.name for n in graph_of(tmp / "model.onnx").node}
        # a Gemm kept FP32 is <name>_MatMul + <name>_Add after ORT's quantizer (graph.quantize_graph)
        excluded = [n for n in recipe.fp32_nodes if n in present or f"{n}_MatMul" in present]
        shutil.copyfile(fp32_dir / "tokenizer.json", tmp / "tokenizer.json")
        document = _document(meta, name, recipe, tmp, key, excluded, split, calibration_texts)
        (tmp / BUNDLE_JSON).write_text(json.dumps(document) + "\n")  # runtime needs it to load
        document["golden"] = _golden(tmp, min_cosine)
        bundle = parse_bundle(document, str(tmp / BUNDLE_JSON))
        (tmp / BUNDLE_JSON).write_text(json.dumps(document, indent=1) + "\n")
    return QuantizeResult(bundle_dir=out_dir, bundle=bundle,
                          fp32_bytes=(fp32_dir / "model.onnx").stat().st_size,
                          int8_bytes=model_bytes(out_dir),
                          seconds=time.perf_counter() - started)
