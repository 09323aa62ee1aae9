"""Convert an exported FP32 model to an FP16 bundle (the variant for GPU providers: CUDA and
TensorRT run FP16, not dynamic INT8's MatMulInteger), with golden outputs.

The conversion is ONNX Runtime's own (onnxruntime.transformers.float16): every float
initializer and activation becomes float16, inputs and outputs stay as they are (ids in,
float32 hidden states out), and the converter's default block list stays FP32.

The same writer makes the FP32 bundle (`--precision fp32`): the export's graph as it is, with
goldens, so `tune` can measure FP32 against INT8 on a board (INT8 is not always the faster there).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.model.bundle import BUNDLE_JSON, Bundle, externalize_weights, model_bytes, parse_bundle
from edgefleet.model.export import EXPORT_META
from edgefleet.model.files import atomic_dir, file_record, inputs_digest

__all__ = ["Fp16Result", "convert_fp16", "write_fp16_bundle", "fp16_graph", "fp16_key", "FP32_OPS", "MIN_MEAN_COSINE"]

# Ops kept in FP32 beyond the converter's defaults. Measured on MiniLM-L6 (tests/data/texts.txt,
# CPU): with none, mean cosine to FP32 is within 1e-6 of 1 (benchmarks/RESULTS.md), so nothing
# more is kept; blocking LayerNormalization in the fused graph is not even possible with this
# converter (the fused Attention then binds float and float16 to one type parameter).
FP32_OPS: tuple[str, ...] = ()
MIN_MEAN_COSINE = 0.9995  # against FP32 on the check texts (issue #21's target)
GOLDEN_MIN_COSINE = 0.999  # device vs host, as the INT8 bundles' goldens


@dataclass(frozen=True)
class Fp16Result:
    """What `convert_fp16` wrote: the bundle directory, its validated metadata and sizes."""

    bundle_dir: Path
    bundle: Bundle
    fp32_bytes: int
    fp16_bytes: int
    seconds: float


def fp16_key(fp32_dir: Path, fp32_ops: tuple[str, ...] = FP32_OPS, precision: str = "fp16") -> str:
    """Hash what the FP16 bundle depends on: the FP32 files, the kept ops, the ORT version."""
    import onnxruntime

    from edgefleet.model.quantize import GOLDEN_QA, GOLDEN_TEXTS

    fp32_dir = Path(fp32_dir)
    files = [fp32_dir / "model.onnx", fp32_dir / "tokenizer.json", fp32_dir / EXPORT_META]
    return inputs_digest(files, {"precision": precision, "fp32_ops": list(fp32_ops), "golden": GOLDEN_TEXTS,
                                 "golden_qa": GOLDEN_QA, "onnxruntime": onnxruntime.__version__})


def fp16_graph(src: Path, dst: Path, fp32_ops: tuple[str, ...] = FP32_OPS) -> None:
    """Write dst: src's graph in float16, inputs and outputs as they were."""
    import onnx
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *fp32_ops])
    onnx.save(converted, str(dst))


def _golden(bundle_dir: Path) -> dict:
    import edge_runtime
    from edge_runtime.golden import expected

    from edgefleet.model.quantize import GOLDEN_QA, GOLDEN_TEXTS, MAX_ABS_DIFF

    model = edge_runtime.load(bundle_dir)
    if model.task == "qa":
        return expected(model, GOLDEN_QA, MAX_ABS_DIFF)
    return expected(model, GOLDEN_TEXTS, GOLDEN_MIN_COSINE if model.task == "embed" else MAX_ABS_DIFF)


def convert_fp16(fp32_dir, out_dir, name: str, fp32_ops: tuple[str, ...] = FP32_OPS,
                 precision: str = "fp16") -> Fp16Result:
    """Write out_dir (atomically): FP16 (or, `precision` fp32, the FP32) model.onnx, tokenizer.json,
    bundle.json with goldens."""
    import onnxruntime

    from edgefleet.model.export import SESSION_CONFIG_UNFUSED

    started = time.perf_counter()
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    meta = json.loads((fp32_dir / EXPORT_META).read_text())
    task = meta.get("task", "embed")
    heads = {"embed": {"pooling": "mean", "normalize": True},
             "classify": {"labels": meta.get("labels")},
             "qa": {"max_answer_len": meta.get("max_answer_len")}}[task]
    with atomic_dir(out_dir) as tmp:
        if precision == "fp32":
            shutil.copyfile(fp32_dir / "model.onnx", tmp / "model.onnx")
            if (fp32_dir / "model.onnx.data").is_file():
                shutil.copyfile(fp32_dir / "model.onnx.data", tmp / "model.onnx.data")
            conversion = {"tool": "none (the FP32 export)", "onnxruntime": onnxruntime.__version__}
        else:
            fp16_graph(fp32_dir / "model.onnx", tmp / "model.onnx", fp32_ops)
            conversion = {"tool": "onnxruntime.transformers.float16", "keep_io_types": True,
                          "fp32_ops": list(fp32_ops), "onnxruntime": onnxruntime.__version__}
        externalize_weights(tmp / "model.onnx")
        shutil.copyfile(fp32_dir / "tokenizer.json", tmp / "tokenizer.json")
        document = {
            "format": 1, "name": name, "task": task, "max_seq_len": meta["max_seq_len"],
            "inputs": meta["inputs"], "outputs": meta["outputs"], **heads,
            "source_model": meta["source_model"], "precision": precision, "conversion": conversion,
            "session_config": {} if meta.get("skip_layer_norm", True) else dict(SESSION_CONFIG_UNFUSED),
            "files": {f: file_record(tmp / f) for f in ("model.onnx", "model.onnx.data", "tokenizer.json")
                      if (tmp / f).is_file()},
            "created_by": f"edgefleet model.quantize --precision {precision}",
            "inputs_sha256": fp16_key(fp32_dir, fp32_ops, precision),
        }
        (tmp / BUNDLE_JSON).write_text(json.dumps(document) + "\n")  # the runtime needs it to load
        document["golden"] = _golden(tmp)
        bundle = parse_bundle(document, str(tmp / BUNDLE_JSON))
        (tmp / BUNDLE_JSON).write_text(json.dumps(document, indent=1) + "\n")
    return Fp16Result(out_dir, bundle, (fp32_dir / "model.onnx").stat().st_size, model_bytes(out_dir),
                      time.perf_counter() - started)


def write_fp16_bundle(fp32_dir: Path, out_dir: Path, name: str, force: bool = False, log=print,
                      precision: str = "fp16") -> dict:
    """Write the FP16 (or FP32) bundle unless one from the same inputs is there (verified); return a report."""
    from edgefleet.model.bundle import BundleError, verify

    key = fp16_key(fp32_dir, precision=precision)
    try:
        current = verify(out_dir) if (out_dir / BUNDLE_JSON).is_file() else None
    except BundleError as error:
        log(f"rebuilding: {error}")
        current = None
    if not force and current is not None and current.inputs_sha256 == key and current.name == name:
        log(f"up to date: {out_dir} (inputs unchanged, file hashes verified)")
        bundle = current
    else:
        result = convert_fp16(fp32_dir, out_dir, name, precision=precision)
        log(f"wrote the {precision.upper()} bundle in {result.seconds:.1f} s")
        bundle = result.bundle
    fp32 = (Path(fp32_dir) / "model.onnx").stat().st_size
    graph = model_bytes(out_dir)
    log(f"wrote {out_dir}: precision {precision}, graph {graph / 1e6:.1f} MB ({100 * graph / fp32:.1f}% of FP32), "
        "tokenizer.json, bundle.json")
    return {"bundle": str(out_dir), "precision": precision, "model_bytes": graph, "fp32_bytes": fp32,
            "conversion": bundle.conversion}
