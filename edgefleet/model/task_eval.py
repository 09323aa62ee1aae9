"""Run a model's task one input per call, as a device does, and compare with a reference.

The ONNX engines run through edge_runtime (the device's own tokenization and post-processing:
softmax over labels, best span over the context). The PyTorch reference of a classify or QA
model is fed the very tokens edge_runtime made, so it differs from the ONNX graph by arithmetic
only, never by tokenizer settings; embed keeps evaluate.torch_reference (the HF tokenizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.model.agreement import Agreement, classify_agreement, qa_agreement
from edgefleet.model.evaluate import DEFAULT_TEXTS, accuracy, read_texts, text_of, torch_reference

__all__ = ["QA_CHECK", "default_inputs", "read_inputs", "outputs", "compare", "torch_outputs",
           "caller", "torch_caller", "timing_input", "graph_model", "QA_QUESTION"]

QA_CHECK = Path(__file__).resolve().parent / "data" / "qa_check.jsonl"
QA_QUESTION = "what does the fleet run?"  # the question of the timing inputs


def default_inputs(task: str) -> Path:
    """Return the check inputs the project ships for a task."""
    return QA_CHECK if task == "qa" else DEFAULT_TEXTS


def read_inputs(path, task: str) -> list:
    """Return texts (embed, classify) or (question, context) pairs (qa: JSON lines).

    Raises ValueError naming the file and line of a malformed pair.
    """
    path = Path(path)
    if task != "qa":
        return read_texts(path)
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                and isinstance(item.get("context"), str) and item["question"].strip()
                and item["context"].strip()):
            raise ValueError(f"{path}:{number}: expected {{\"question\": str, \"context\": str}}")
        pairs.append((item["question"], item["context"]))
    if not pairs:
        raise ValueError(f"{path}: no question/context pairs")
    return pairs


def outputs(model, inputs: list) -> Any:
    """Return the task's outputs, one input per call: embeddings (rows), label probabilities
    (rows, in label order) or answers ({"start", "end", "score", "answer"} per pair)."""
    if model.task == "embed":
        return np.stack([model.embed([text])[0] for text in inputs])
    if model.task == "classify":
        labels = model.meta["labels"]
        return np.array([[row["scores"][label] for label in labels]
                         for row in (model.classify([text])[0] for text in inputs)])
    return [model.answer(question, context) for question, context in inputs]


def compare(task: str, got, reference) -> Agreement:
    """Return the task's agreement of got with reference (see edgefleet.model.agreement)."""
    if task == "embed":
        return accuracy(got, reference)
    if task == "classify":
        return classify_agreement(got, reference)
    return qa_agreement(got, reference)


def _torch_model(model_dir, task: str):
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    auto = {"embed": "AutoModel", "classify": "AutoModelForSequenceClassification",
            "qa": "AutoModelForQuestionAnswering"}[task]
    return getattr(transformers, auto).from_pretrained(str(model_dir),
                                                       attn_implementation="eager").eval()


def torch_outputs(model_dir, runtime, inputs: list) -> Any:
    """Return FP32 PyTorch (eager) outputs of the source model, like `outputs` gives them."""
    import torch
    from edge_runtime.heads import answer_from, softmax

    if runtime.task == "embed":
        return torch_reference(model_dir, inputs, runtime.max_seq_len)
    model = _torch_model(model_dir, runtime.task)
    rows: list = []
    with torch.no_grad():
        for item in inputs:
            feeds = runtime.tokenize_one(*([item] if runtime.task == "classify" else item))
            result = model(**{name: torch.tensor(np.array(value, dtype=np.int64))
                              for name, value in feeds.items()})
            if runtime.task == "classify":
                rows.append(softmax(result.logits[0].numpy()))
                continue
            encoding = runtime.last_encoding
            rows.append(answer_from(result.start_logits[0].numpy(), result.end_logits[0].numpy(),
                                    encoding.sequence_ids, encoding.offsets, item[1],
                                    runtime.meta["max_answer_len"]))
    return np.stack(rows) if runtime.task == "classify" else rows


def caller(model) -> Callable[[list], Any]:
    """Return fn(inputs) running the model's task on a batch (qa: one pair after another)."""
    if model.task == "embed":
        return model.embed
    if model.task == "classify":
        return model.classify
    return lambda pairs: [model.answer(question, context) for question, context in pairs]


def timing_input(task: str, tokens: int, tokenizer) -> Any:
    """Return one input of about `tokens` tokens: a text, or (qa) a short question and a
    context filling the rest."""
    if task != "qa":
        return text_of(tokens, tokenizer)
    question = len(tokenizer.encode(QA_QUESTION).ids) - 1  # its [SEP] is shared with the pair
    return QA_QUESTION, text_of(max(tokens - question, 3), tokenizer)


def torch_caller(model_dir, task: str, threads: int, max_len: int,
                 max_answer_len: int = 30) -> Callable[[list], Any]:
    """Return fn(inputs) running the source model in PyTorch end to end (tokenize, forward,
    softmax or best span), for timing beside the ONNX engines."""
    import torch
    from edge_runtime.heads import best_span, softmax
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = _torch_model(model_dir, task)

    def run(inputs: list):
        with torch.inference_mode():
            if task != "qa":
                enc = tokenizer(list(inputs), return_tensors="pt", truncation=True,
                                max_length=max_len, padding=True)
                out = model(**enc)
                if task == "classify":
                    return softmax(out.logits.numpy())
                mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
                pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
                return torch.nn.functional.normalize(pooled, dim=-1).numpy()
            spans = []
            for question, context in inputs:
                enc = tokenizer(question, context, return_tensors="pt",
                                truncation="only_second", max_length=max_len)
                out = model(**enc)
                spans.append(best_span(out.start_logits[0].numpy(), out.end_logits[0].numpy(),
                                       enc["token_type_ids"][0].numpy() == 1, max_answer_len))
            return spans
    return run


def graph_model(graph: Path, fp32_dir: Path, scratch: Path, session_config: dict[str, str],
                threads: int = 1):
    """Load an ONNX graph of an export (e.g. a quantization candidate) as edge_runtime would a
    bundle of it: a scratch bundle dir linking the graph and the export's tokenizer."""
    import edge_runtime
    from edge_runtime.model import BUNDLE_JSON

    from edgefleet.model.export import read_meta

    export = read_meta(fp32_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    for name, src in (("model.onnx", graph), ("tokenizer.json", fp32_dir / "tokenizer.json")):
        link = scratch / name
        link.unlink(missing_ok=True)
        link.symlink_to(Path(src).resolve())
    keys = ("task", "max_seq_len", "inputs", "outputs", "labels", "max_answer_len")
    meta = {"format": 1, "name": scratch.name, "task": "embed", "pooling": "mean", "normalize": True,
            "session_config": session_config,
            **{key: export[key] for key in keys if export.get(key) is not None}}
    (scratch / BUNDLE_JSON).write_text(json.dumps(meta))
    return edge_runtime.load(scratch, threads=threads)
