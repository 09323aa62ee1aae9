"""Quantize an exported FP32 model to dynamic INT8 and write a bundle with golden outputs."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.model.bundle import BUNDLE_JSON, Bundle, parse_bundle
from edgefleet.model.export import EXPORT_META
from edgefleet.model.files import atomic_dir, file_record, inputs_digest

__all__ = ["QuantizeResult", "quantize", "quantize_key", "bundle_name", "GOLDEN_TEXTS",
           "MIN_COSINE"]

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
# The golden outputs come from this same INT8 bundle run by edge_runtime on the host, so a
# device differs from them only by kernel-level arithmetic (x86 VNNI vs ARM SDOT, thread
# splits, activation rounding); a wrong model, tokenizer or pooling gives cosines far below.
MIN_COSINE = 0.999


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


def quantize_key(fp32_dir, per_channel: bool = True, min_cosine: float = MIN_COSINE) -> str:
    """Hash everything the bundle depends on: FP32 files, settings, ORT version, golden texts."""
    import onnxruntime

    fp32_dir = Path(fp32_dir)
    files = [fp32_dir / "model.onnx", fp32_dir / "tokenizer.json", fp32_dir / EXPORT_META]
    settings = {"per_channel": per_channel, "min_cosine": min_cosine, "golden": GOLDEN_TEXTS,
                "onnxruntime": onnxruntime.__version__, "format": 1}
    return inputs_digest(files, settings)


def _golden(bundle_dir: Path, texts: list[str]) -> list[list[float]]:
    import edge_runtime

    model = edge_runtime.load(bundle_dir)
    # One text per call, as the device's selftest does: dynamic INT8 picks its activation
    # scales per call, so a padded batch gives (slightly) different vectors than batch 1.
    rows = [model.embed([text])[0] for text in texts]
    return [[round(float(v), 7) for v in row] for row in rows]


def _document(meta: dict, name: str, per_channel: bool, tmp: Path, key: str) -> dict:
    import onnxruntime

    from importlib.metadata import version

    return {
        "format": 1, "name": name, "task": "embed", "max_seq_len": meta["max_seq_len"],
        "inputs": meta["inputs"], "outputs": meta["outputs"], "pooling": "mean",
        "normalize": True, "source_model": meta["source_model"],
        "quantization": {"method": "dynamic", "weight_type": "QInt8", "per_channel": per_channel,
                         "onnxruntime": onnxruntime.__version__},
        "files": {f: file_record(tmp / f) for f in ("model.onnx", "tokenizer.json")},
        "created_by": f"edgefleet {version('edgefleet')}", "inputs_sha256": key,
    }


def quantize(fp32_dir, out_dir, name: str | None = None, per_channel: bool = True,
             min_cosine: float = MIN_COSINE) -> QuantizeResult:
    """Write out_dir (atomically): INT8 model.onnx, tokenizer.json, bundle.json with golden."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    meta = json.loads((fp32_dir / EXPORT_META).read_text())
    name = name or bundle_name(meta["source_model"]["name"])
    key = quantize_key(fp32_dir, per_channel, min_cosine)
    with atomic_dir(out_dir) as tmp:
        quantize_dynamic(str(fp32_dir / "model.onnx"), str(tmp / "model.onnx"),
                         weight_type=QuantType.QInt8, per_channel=per_channel,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
        shutil.copyfile(fp32_dir / "tokenizer.json", tmp / "tokenizer.json")
        document = _document(meta, name, per_channel, tmp, key)
        (tmp / BUNDLE_JSON).write_text(json.dumps(document) + "\n")  # runtime needs it to load
        document["golden"] = {"texts": GOLDEN_TEXTS, "min_cosine": min_cosine,
                              "embeddings": _golden(tmp, GOLDEN_TEXTS)}
        bundle = parse_bundle(document, str(tmp / BUNDLE_JSON))
        (tmp / BUNDLE_JSON).write_text(json.dumps(document, indent=1) + "\n")
    return QuantizeResult(bundle_dir=out_dir, bundle=bundle,
                          fp32_bytes=(fp32_dir / "model.onnx").stat().st_size,
                          int8_bytes=(out_dir / "model.onnx").stat().st_size,
                          seconds=time.perf_counter() - started)
