"""Load a bundle into an ONNX Runtime session: embeddings, labels or answer spans by its task."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edge_runtime.heads import InputError, TaskError, answer_from, label_scores
from edge_runtime.providers import (
    ProviderChoice,
    choose_providers,
    profile_prefix,
    profiled_node_shares,
    with_options,
)

__all__ = ["EmbeddingModel", "BundleFormatError", "load", "read_meta", "mean_pool",
           "l2_normalize", "session_options", "TASK_KEYS", "OrtSessions", "ORT_SESSIONS"]

BUNDLE_JSON = "bundle.json"
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
META_KEYS = {"format": int, "task": str, "max_seq_len": int, "inputs": list, "outputs": list}
TASK_KEYS: dict[str, dict[str, type]] = {"embed": {"pooling": str, "normalize": bool}, "classify": {"labels": list},
             "qa": {"max_answer_len": int}}


class BundleFormatError(ValueError):
    """bundle.json is missing, malformed, or asks for something this runtime cannot do."""


def read_meta(bundle_dir) -> dict:
    """Read bundle_dir/bundle.json with plain json; errors name the file and the key."""
    path = Path(bundle_dir) / BUNDLE_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleFormatError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise BundleFormatError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise BundleFormatError(f"{path}: expected a JSON object")
    if meta.get("task") not in TASK_KEYS:
        raise BundleFormatError(f"{path}: key 'task' must be one of {', '.join(TASK_KEYS)}, "
                                f"got {meta.get('task')!r}")
    for key, kind in {**META_KEYS, **TASK_KEYS[meta["task"]]}.items():
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta[key], bool)):
            raise BundleFormatError(f"{path}: key {key!r} must be {kind.__name__}, "
                                    f"got {meta.get(key)!r}")
    if meta["format"] != 1 or meta.get("pooling", "mean") not in ("mean", "cls"):
        raise BundleFormatError(f"{path}: unsupported format/pooling "
                                f"{meta['format']}/{meta.get('pooling')}")
    if meta["task"] == "classify" and not (meta["labels"] and all(
            isinstance(label, str) for label in meta["labels"])):
        raise BundleFormatError(f"{path}: key 'labels' must be a non-empty list of strings")
    if meta["task"] == "qa" and meta["max_answer_len"] < 1:
        raise BundleFormatError(f"{path}: key 'max_answer_len' must be >= 1")
    return meta


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average token vectors (batch, seq, dim) over positions where mask is 1."""
    weights = mask.astype(np.float32)[:, :, None]
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    return (hidden * weights).sum(axis=1) / counts


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


@dataclass
class EmbeddingModel:
    """An ONNX Runtime session, its tokenizer and the bundle's metadata.

    What it does follows the bundle's task: embed(texts), classify(texts) or
    answer(question, context); the others raise TaskError.
    """

    session: ort.InferenceSession
    tokenizer: Tokenizer
    meta: dict
    bundle_dir: Path
    max_seq_len: int
    threads: int | None = None
    input_names: tuple[str, ...] = field(default=())
    input_types: dict = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _constant: dict = field(default_factory=dict, repr=False)
    last_tokens: int = 0  # batch x sequence length of the latest call
    last_encoding: Any = field(default=None, repr=False)
    providers: ProviderChoice | None = None  # what runtime.yaml asked for and what is missing
    node_share: dict = field(default_factory=dict)  # provider -> share of graph nodes, when profiled

    def __post_init__(self):
        # One input is never padded, so its attention mask is all ones; one text's type ids are
        # all zeros when the tokenizer says so for a probe (a QA pair's are not: tokenize_one
        # gives those their own array). Those two buffers are then filled once per thread
        # instead of from Python lists on every call.
        probe = self.tokenizer.encode("a probe, with two words")
        self._constant = {"attention_mask": True,
                          "token_type_ids": not any(probe.type_ids)}

    def _buffers(self) -> dict[str, np.ndarray]:
        """Return the calling thread's input buffers: several inference workers run the one
        session at once (ORT's run is thread-safe), so the batch-1 buffers are per thread."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = {name: np.zeros(self.max_seq_len, dtype=self.input_types.get(name, np.int64))
                       for name in self.input_names}
            for name, value in (("attention_mask", 1), ("token_type_ids", 0)):
                if name in buffers:
                    buffers[name][:] = value
            self._local.buffers = buffers
        return buffers

    @property
    def task(self) -> str:
        """Return the bundle's task: embed, classify or qa."""
        return self.meta["task"]

    @property
    def dim(self) -> int:
        """Return the embedding width (for classify: the number of labels)."""
        return int(self.session.get_outputs()[0].shape[-1])

    def _expect(self, task: str) -> None:
        if self.task != task:
            raise TaskError(f"bundle {self.meta.get('name', self.bundle_dir)} is a "
                            f"{self.task!r} bundle, not {task!r}")

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Encode texts, truncated to max_seq_len; a batch pads to its longest, one text never."""
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: feeds[name].astype(self.input_types.get(name, np.int64), copy=False)
                for name in self.input_names}

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Return each text's token count after truncation (padding not counted)."""
        return [sum(e.attention_mask) for e in self.tokenizer.encode_batch(list(texts))]

    def tokenize_one(self, text: str, pair: str | None = None) -> dict[str, np.ndarray]:
        """Encode one text (or a pair) into the thread's buffers; return (1, n) views.

        The encoding itself is kept in last_encoding (offsets and sequence ids for QA).
        """
        feeds, self.last_encoding = self._encode_one(text, pair)
        return feeds

    def _encode_one(self, text: str, pair: str | None = None) -> tuple[dict[str, np.ndarray], Any]:
        try:
            encoding = self.tokenizer.encode(text, pair)
        except Exception as error:  # tokenizers raises a bare Exception when truncation fails
            raise InputError(f"cannot fit the input into {self.max_seq_len} tokens: "
                             f"{error}") from None
        n = len(encoding.ids)
        sources = {"input_ids": "ids", "attention_mask": "attention_mask",
                   "token_type_ids": "type_ids"}
        feeds = {}
        buffers = self._buffers()
        for name in self.input_names:
            buffer = buffers[name]
            if name == "token_type_ids" and pair is not None:  # the pair's segment is 1
                feeds[name] = np.array([encoding.type_ids], dtype=buffer.dtype)
                continue
            if not self._constant.get(name):
                buffer[:n] = getattr(encoding, sources[name])
            feeds[name] = buffer[:n].reshape(1, n)
        return feeds, encoding

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph and return its first output (batch, seq, dim)."""
        return self.session.run(None, feeds)[0]

    def classify(self, texts: list[str]) -> list[dict]:
        """Return per text {"label", "score", "scores": {label: probability}} (softmax)."""
        self._expect("classify")
        texts = list(texts)
        if not texts:
            return []
        feeds = self._encode_one(texts[0])[0] if len(texts) == 1 else self.tokenize(texts)
        logits = self.infer(feeds)
        self.last_tokens = int(feeds["input_ids"].size)
        return label_scores(logits, self.meta["labels"])

    def answer(self, question: str, context: str) -> dict:
        """Return the best answer span in context: {"answer", "score", "start", "end"}.

        The pair is truncated to max_seq_len by cutting the context only; the span is chosen
        within the context tokens that remain, at most max_answer_len tokens long.
        """
        self._expect("qa")
        feeds, encoding = self._encode_one(question, context)
        start_logits, end_logits = self.session.run(self.meta["outputs"][:2], feeds)
        self.last_tokens = len(encoding.ids)
        return answer_from(start_logits[0], end_logits[0], encoding.sequence_ids,
                           encoding.offsets, context, self.meta["max_answer_len"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return one float32 embedding row per text (L2-normalized if the bundle says so)."""
        self._expect("embed")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # the batch-1 path reuses the calling thread's buffers (one call at a time per thread)
        feeds = self._encode_one(texts[0])[0] if len(texts) == 1 else self.tokenize(texts)
        hidden = self.infer(feeds).astype(np.float32, copy=False)
        self.last_tokens = int(hidden.shape[0] * hidden.shape[1])
        mask = feeds.get("attention_mask")
        mask = mask.copy() if mask is not None else np.ones(hidden.shape[:2])
        if self.meta["pooling"] == "cls":
            pooled = hidden[:, 0, :]
        elif len(texts) == 1:  # one text, no padding: a plain mean (cheaper than masked)
            pooled = hidden.mean(axis=1)
        else:
            pooled = mean_pool(hidden, mask)
        if self.meta["normalize"]:
            pooled = l2_normalize(pooled)
        return np.ascontiguousarray(pooled, dtype=np.float32)


def session_options(threads: int | None, spin: bool = False,
                    flush_denormals: bool = False) -> ort.SessionOptions:
    """Return CPU session options: intra-op threads set explicitly, inter-op 1, spin or not,
    denormals flushed to zero or not (session.set_denormal_as_zero).

    ORT sizes its pool from the machine, not from the process's affinity, so threads is always
    set: without a value, one thread per CPU the process may run on.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or len(os.sched_getaffinity(0)))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # No CPU memory arena: the arena keeps its peak for ever (server RSS 218 MiB after 3 batches
    # of 8 x 256 tokens with it, 105 MiB without it plus the service's idle malloc_trim and one
    # malloc arena), and batch-1 latency is the same within noise at 16..256 tokens
    # (x86_64, 2 threads, MiniLM INT8, benchmarks/bench_runtime.py).
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OrtSessions:
    """The one seam where sessions are made: which providers onnxruntime offers, and a session.

    Tests give the runtime their own (an onnxruntime that offers TensorRT and builds slowly).
    """

    def available(self) -> list[str]:
        return list(ort.get_available_providers())

    def create(self, source, options: ort.SessionOptions, providers) -> ort.InferenceSession:
        return ort.InferenceSession(source, sess_options=options,
                                    providers=[name for name, _ in providers],
                                    provider_options=[dict(opts) for _, opts in providers])


ORT_SESSIONS = OrtSessions()


def _session(model_path: Path, options: ort.SessionOptions, from_bytes: bool = False,
             providers=(("CPUExecutionProvider", {}),), sessions: OrtSessions = ORT_SESSIONS) -> ort.InferenceSession:
    # load-from-path measured faster and smaller than from bytes (benchmarks/bench_runtime.py)
    source: str | bytes = str(model_path)
    if from_bytes:
        source = model_path.read_bytes()  # external weights (model.onnx.data) resolve beside it
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(model_path.parent))
    return sessions.create(source, options, providers)


def _check_outputs(bundle_dir: Path, meta: dict, session) -> None:
    """Raise BundleFormatError when the graph's outputs do not fit the bundle's task."""
    outputs = {item.name: item.shape for item in session.get_outputs()}
    missing = [name for name in meta["outputs"] if name not in outputs]
    wanted = {"embed": 1, "classify": 1, "qa": 2}[meta["task"]]
    if missing or len(meta["outputs"]) < wanted:
        raise BundleFormatError(f"{bundle_dir / BUNDLE_JSON}: key 'outputs' {meta['outputs']} "
                                f"does not fit the graph's outputs {sorted(outputs)} for task "
                                f"{meta['task']!r}")
    if meta["task"] == "classify":
        width = outputs[meta["outputs"][0]][-1]
        if isinstance(width, int) and width != len(meta["labels"]):
            raise BundleFormatError(f"{bundle_dir / BUNDLE_JSON}: key 'labels' has "
                                    f"{len(meta['labels'])} labels, the graph gives {width}")


TRT = "TensorrtExecutionProvider"


def _engine_session(bundle_dir: Path, options, choice: ProviderChoice, sessions: OrtSessions, engine):
    """Start from the engine cache's context model when there is one (no TensorRT builder), else
    from model.onnx with the cache's options (ORT builds, or reads its engine files, and writes the
    context model). A context model that fails to load is moved aside and the build path taken."""
    started = time.perf_counter()
    if engine.has_context_model():
        try:
            session = sessions.create(str(engine.context_model), options,
                                      with_options(choice.session_providers, TRT, engine.context_options))
            engine.source = "context model"
            engine.record()
            return session
        except Exception as error:  # ORT's own exception types differ by build
            engine.discard_context_model(f"{type(error).__name__}: {str(error)[:300]}")
    session = sessions.create(str(bundle_dir / "model.onnx"), options,
                              with_options(choice.session_providers, TRT, engine.engine_options))
    engine.source = "model"
    engine.record(built_s=time.perf_counter() - started)
    return session


def load(bundle_dir, threads: int | None = None, max_seq_len: int | None = None,
         spin: bool = False, from_bytes: bool = False, options=None,
         flush_denormals: bool = False, providers=("CPUExecutionProvider",),
         provider_options: dict | None = None, profile_nodes: bool = False,
         sessions: OrtSessions | None = None, engine=None) -> EmbeddingModel:
    """Load a bundle; max_seq_len may lower the bundle's limit, never raise it.

    `providers`: preferred first; those this onnxruntime does not offer are left out (the
    model's `providers` says which), CPU is always last. `profile_nodes`: run one probe with
    ORT's profiler to learn the share of nodes each provider took (model.node_share).
    `engine`: an engine_cache.EngineCache, used when TensorRT is among the session's providers.
    """
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    limit = meta["max_seq_len"] if not max_seq_len else min(int(max_seq_len), meta["max_seq_len"])
    tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    # QA keeps the whole question and cuts the context (the answer is searched in what is left)
    tokenizer.enable_truncation(max_length=limit, strategy="only_second" if meta["task"] == "qa"
                                else "longest_first")
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    options = options or session_options(threads, spin, flush_denormals)
    # bundle-chosen ORT settings, e.g. keeping SkipLayerNorm unfused where that measured faster
    for key, value in (meta.get("session_config") or {}).items():
        options.add_session_config_entry(str(key), str(value))
    sessions = sessions or ORT_SESSIONS
    choice = choose_providers(providers, provider_options or {}, sessions.available())
    if profile_nodes:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix()
    if engine is not None and TRT in choice.names:
        session = _engine_session(bundle_dir, options, choice, sessions, engine)
    else:
        session = _session(bundle_dir / "model.onnx", options, from_bytes, choice.session_providers, sessions)
    graph_inputs = {item.name: item.type for item in session.get_inputs()}
    unknown = set(graph_inputs) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise BundleFormatError(f"{bundle_dir / 'model.onnx'}: unsupported inputs "
                                f"{sorted(unknown)}")
    _check_outputs(bundle_dir, meta, session)
    names = tuple(name for name in ("input_ids", "attention_mask", "token_type_ids")
                  if name in graph_inputs)
    model = EmbeddingModel(session=session, tokenizer=tokenizer, meta=meta, bundle_dir=bundle_dir,
                           max_seq_len=limit, threads=options.intra_op_num_threads,
                           input_names=names,
                           input_types={name: _DTYPES.get(graph_inputs[name], np.int64)
                                        for name in names}, providers=choice)
    if profile_nodes:
        model.node_share = profiled_node_shares(
            session, lambda: model.infer(model.tokenize_one("a probe of the providers")))
    return model
