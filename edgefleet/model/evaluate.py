"""Measure an ONNX embedding graph against FP32 PyTorch: cosines, neighbours, latency."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Accuracy", "read_texts", "torch_reference", "ort_session", "ort_embed", "accuracy",
           "encode_feeds",
           "text_of", "interleaved_medians", "DEFAULT_TEXTS"]

DEFAULT_TEXTS = Path(__file__).resolve().parents[2] / "tests" / "data" / "texts.txt"
WORDS = ("edge devices run quantized transformer models close to the sensors that feed them "
         "while the fleet keeps every board on the same release").split()


@dataclass(frozen=True)
class Accuracy:
    """Cosines against the reference, one per text, and nearest-neighbour agreement."""

    cosines: np.ndarray
    neighbours: float

    @property
    def mean(self) -> float:
        return float(self.cosines.mean())

    @property
    def min(self) -> float:
        return float(self.cosines.min())

    def as_dict(self) -> dict:
        return {"mean_cosine": round(self.mean, 6), "min_cosine": round(self.min, 6),
                "neighbour_agreement": round(self.neighbours, 4)}


def read_texts(path=None) -> list[str]:
    """Return the non-empty lines of a text file (default: the texts the project ships)."""
    path = Path(path) if path else DEFAULT_TEXTS
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def torch_reference(model_dir, texts: list[str], max_len: int) -> np.ndarray:
    """Return FP32 PyTorch (eager) mean-pooled, normalized embeddings, one text per call."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_len, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            mask = enc["attention_mask"][0].unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(0) / mask.sum()).numpy())
    return _normalize(np.stack(rows))


def ort_session(onnx_path, threads: int = 1):
    """Return a CPU session configured like edge_runtime's (explicit threads, no spinning)."""
    import onnxruntime as ort
    from edge_runtime.model import session_options

    return ort.InferenceSession(str(onnx_path), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])


def encode_feeds(tokenizer, text: str, names, length: int = 0) -> dict[str, np.ndarray]:
    """Return the graph inputs (those in names) for one text, batch 1, padded to length."""
    enc = tokenizer.encode(text)
    if length:
        enc.pad(length)
    feeds = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
             "token_type_ids": enc.type_ids}
    return {name: np.array([value], dtype=np.int64) for name, value in feeds.items()
            if name in names}


def ort_embed(session, tokenizer, texts: list[str]) -> np.ndarray:
    """Embed texts one per call (batch 1, no padding) with a raw session."""
    names = {item.name for item in session.get_inputs()}
    rows = []
    for text in texts:
        hidden = session.run(None, encode_feeds(tokenizer, text, names))[0][0]
        rows.append(hidden.mean(axis=0))
    return _normalize(np.stack(rows))


def accuracy(embeddings: np.ndarray, reference: np.ndarray) -> Accuracy:
    """Compare row-normalized embeddings with the reference: cosines and top-1 neighbours."""
    embeddings, reference = _normalize(embeddings), _normalize(reference)
    cosines = (embeddings * reference).sum(axis=1)

    def nearest(rows):
        sims = rows @ rows.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    agree = float((nearest(embeddings) == nearest(reference)).mean())
    return Accuracy(cosines=cosines, neighbours=agree)


def text_of(tokens: int, tokenizer) -> str:
    """Return a text that tokenizes to about `tokens` tokens (with [CLS]/[SEP])."""
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words)).ids) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def interleaved_medians(engines: dict, arg, rounds: int, warmup: int = 2,
                        clock=time.perf_counter) -> dict[str, float]:
    """Call each engine on arg round-robin; return the median ms of each.

    The engines' order rotates each round (round r starts with engine r mod n): whichever runs
    first or right after another engine pays for caches and frequency in its own way, and a
    fixed order gave identical copies of one bundle 0.89-0.98x of each other's time.
    clock=time.thread_time counts only the CPU time of the calling thread: with one intra-op
    thread ORT runs every kernel on it, so a loaded machine's time slicing drops out.
    """
    for fn in engines.values():
        for _ in range(warmup):
            fn(arg)
    names = list(engines)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for index in range(rounds):
        start = index % len(names)
        for name in names[start:] + names[:start]:
            started = clock()
            engines[name](arg)
            samples[name].append((clock() - started) * 1000)
    return {name: statistics.median(samples[name]) for name in names}
