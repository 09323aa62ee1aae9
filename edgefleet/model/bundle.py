"""The bundle.json model: typed, validated on read, with file-hash verification."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from edgefleet.model.files import file_record

from ..errors import InputError

__all__ = ["Bundle", "BundleError", "FileRecord", "Golden", "ClassifyGolden", "QaGolden",
           "read_bundle", "verify", "hash_problems", "BUNDLE_JSON", "REQUIRED_FILES", "WEIGHTS_FILE",
           "externalize_weights", "model_bytes"]

BUNDLE_JSON = "bundle.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")
# The graph's large initializers live beside it in one file ONNX Runtime memory-maps instead of
# copying: the session loads faster and with less anonymous memory (see benchmarks/RESULTS.md);
# the embedding table stays a clean, shared, reclaimable file mapping.
WEIGHTS_FILE = "model.onnx.data"
EXTERNAL_MIN_BYTES = 4096  # small enough that the tests' tiny BERT has a weights file too
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHA256 = r"^[0-9a-f]{64}$"


class BundleError(InputError, ValueError):
    """A bundle directory or its bundle.json is missing, malformed or does not match its files."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRecord(_Strict):
    sha256: str = Field(pattern=SHA256)
    bytes: int = Field(ge=0)


class SourceModel(_Strict):
    name: str = Field(min_length=1)
    dir: str
    config_sha256: str = Field(pattern=SHA256)


class Quantization(_Strict):
    method: Literal["dynamic", "static"]
    weight_type: Literal["QInt8", "QUInt8"]
    per_channel: bool
    # per-row: a text's result does not depend on its batch (edgefleet.model.per_row); absent
    # in bundles written before it (they scaled per tensor)
    activation_scales: Literal["per-row", "per-tensor", "mixed", "static", "none"] | None = None
    onnxruntime: str
    smooth_alpha: float | None = Field(default=None, gt=0.0, le=1.0)
    calibration_texts: str | None = None
    calibration_method: Literal["minmax", "entropy", "percentile"] | None = None
    fp32_nodes: list[str] = Field(default_factory=list)
    outlier_channels: dict[str, int] = Field(default_factory=dict)


class Golden(_Strict):
    texts: list[str] = Field(min_length=1)
    embeddings: list[list[float]] = Field(min_length=1)
    min_cosine: float = Field(gt=0.0, le=1.0)
    tokens: list[int] | None = None  # each input's length (edge_runtime.golden.fitting)

    @model_validator(mode="after")
    def _shapes_match(self) -> Golden:
        if len(self.texts) != len(self.embeddings):
            raise ValueError(f"{len(self.texts)} texts but {len(self.embeddings)} embeddings")
        dims = {len(row) for row in self.embeddings}
        if len(dims) != 1 or 0 in dims:
            raise ValueError(f"embeddings must be non-empty rows of one width, got widths {dims}")
        return self


class ClassifyGolden(_Strict):
    """Classification goldens: each text's probability per label."""

    texts: list[str] = Field(min_length=1)
    scores: list[dict[str, float]] = Field(min_length=1)
    max_abs_diff: float = Field(gt=0.0, le=1.0)
    tokens: list[int] | None = None

    @model_validator(mode="after")
    def _shapes_match(self) -> ClassifyGolden:
        if len(self.texts) != len(self.scores):
            raise ValueError(f"{len(self.texts)} texts but {len(self.scores)} scores")
        return self


class Answer(_Strict):
    answer: str
    score: float = Field(ge=0.0, le=1.0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class QaGolden(_Strict):
    """QA goldens: question/context pairs and each one's best span and score."""

    questions: list[str] = Field(min_length=1)
    contexts: list[str] = Field(min_length=1)
    answers: list[Answer] = Field(min_length=1)
    max_abs_diff: float = Field(gt=0.0, le=1.0)
    tokens: list[int] | None = None

    @model_validator(mode="after")
    def _shapes_match(self) -> QaGolden:
        if not len(self.questions) == len(self.contexts) == len(self.answers):
            raise ValueError(f"{len(self.questions)} questions, {len(self.contexts)} contexts, "
                             f"{len(self.answers)} answers")
        return self


GOLDEN_TAGS = {"embed": Golden, "classify": ClassifyGolden, "qa": QaGolden}


def _golden_tag(value) -> str:
    """Pick the golden kind from its expected-output key (as edge_runtime.golden does)."""
    keys = value if isinstance(value, dict) else vars(value)
    return "qa" if "answers" in keys else "classify" if "scores" in keys else "embed"


class Bundle(_Strict):
    format: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Literal["embed", "classify", "qa"]
    max_seq_len: int = Field(gt=1)
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    pooling: Literal["mean", "cls"] | None = None  # embed only
    normalize: bool | None = None  # embed only
    labels: list[str] | None = Field(default=None, min_length=1)  # classify only, in id order
    max_answer_len: int | None = Field(default=None, ge=1)  # qa only, in tokens
    source_model: SourceModel
    # the variant: int8 for CPUs, fp16 for GPU providers, fp32 the export as it is (edgefleet.model.fp16); int8 bundles
    # say how they were quantized, fp16 and fp32 ones how they were converted
    precision: Literal["int8", "fp32", "fp16"] = "int8"
    quantization: Quantization | None = None
    conversion: dict | None = None
    # ONNX Runtime session config entries the runtime should set (add_session_config_entry)
    session_config: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileRecord]
    golden: Annotated[Annotated[Golden, Tag("embed")] | Annotated[ClassifyGolden, Tag("classify")]
                      | Annotated[QaGolden, Tag("qa")], Discriminator(_golden_tag)]
    created_by: str
    inputs_sha256: str | None = Field(default=None, pattern=SHA256)

    @model_validator(mode="after")
    def _required_files(self) -> Bundle:
        missing = [name for name in REQUIRED_FILES if name not in self.files]
        if missing:
            raise ValueError(f"files must list {', '.join(missing)}")
        odd = [name for name in self.files if not FILE_NAME.fullmatch(name) or name == BUNDLE_JSON]
        if odd:
            raise ValueError(f"files: {', '.join(map(repr, odd))} must be plain file names in the bundle "
                             f"directory (letters, digits, '.', '_', '-'), not {BUNDLE_JSON}")
        if (self.quantization is None) == (self.precision == "int8"):
            raise ValueError("key 'quantization' is required for precision int8 and only for it")
        if "input_ids" not in self.inputs:
            raise ValueError("inputs must include input_ids")
        needs = {"embed": ("pooling", "normalize"), "classify": ("labels",),
                 "qa": ("max_answer_len",)}
        for task, keys in needs.items():
            for key in keys:
                if (getattr(self, key) is None) == (task == self.task):
                    rule = "required" if task == self.task else "not allowed"
                    raise ValueError(f"key {key!r} is {rule} for task {self.task!r}")
        count = len(self.golden.questions if isinstance(self.golden, QaGolden) else self.golden.texts)
        if self.golden.tokens is not None and len(self.golden.tokens) != count:
            raise ValueError(f"golden has {count} inputs but {len(self.golden.tokens)} tokens")
        if _golden_tag(self.golden) != self.task:
            raise ValueError(f"golden outputs are for task {_golden_tag(self.golden)!r}, "
                             f"not {self.task!r}")
        return self


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        # the golden's kind (a union tag) is not a key of the document: leave it out
        loc = [part for i, part in enumerate(item["loc"])
               if not (i == 1 and item["loc"][0] == "golden" and part in GOLDEN_TAGS)]
        key = ".".join(str(part) for part in loc) or "(top level)"
        parts.append(f"key {key!r}: {item['msg']}")
    return "; ".join(parts)


def parse_bundle(data: dict, source: str = BUNDLE_JSON) -> Bundle:
    """Validate a bundle.json document; errors name the source and the key."""
    try:
        return Bundle.model_validate(data)
    except ValidationError as error:
        raise BundleError(f"{source}: {_describe(error)}") from None


def read_bundle(bundle_dir) -> Bundle:
    """Read and validate bundle_dir/bundle.json."""
    path = Path(bundle_dir) / BUNDLE_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: not found (is {bundle_dir} a bundle directory?)") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    return parse_bundle(data, str(path))


def hash_problems(bundle_dir, bundle: Bundle) -> list[str]:
    """Return one message per file whose size or sha256 differs from bundle.json."""
    problems = []
    for name, expected in sorted(bundle.files.items()):
        path = Path(bundle_dir) / name
        if not path.is_file():
            problems.append(f"{path}: missing (bundle.json key 'files.{name}')")
            continue
        actual = file_record(path)
        if actual["bytes"] != expected.bytes or actual["sha256"] != expected.sha256:
            problems.append(f"{path}: sha256 {actual['sha256'][:12]}… ({actual['bytes']} bytes) "
                            f"!= bundle.json 'files.{name}' {expected.sha256[:12]}… "
                            f"({expected.bytes} bytes)")
    return problems


def verify(bundle_dir) -> Bundle:
    """Read bundle.json and check every listed file's size and sha256; raise BundleError if off."""
    bundle = read_bundle(bundle_dir)
    problems = hash_problems(bundle_dir, bundle)
    if problems:
        raise BundleError("; ".join(problems))
    return bundle


def externalize_weights(model_path: Path, min_bytes: int = EXTERNAL_MIN_BYTES) -> None:
    """Rewrite model_path so its initializers of min_bytes or more live in WEIGHTS_FILE beside it."""
    import onnx

    model_path = Path(model_path)
    data = model_path.with_name(WEIGHTS_FILE)
    model = onnx.load(str(model_path))  # loads any external data the graph already had
    data.unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=min_bytes)
    if data.is_file() and data.stat().st_size == 0:
        data.unlink()
    elif data.is_file():
        data.chmod(0o644)  # onnx creates it 0600; the runtime may run as another user


def model_bytes(bundle_dir) -> int:
    """Return the bytes of the graph and its external weights."""
    return sum((Path(bundle_dir) / name).stat().st_size for name in ("model.onnx", WEIGHTS_FILE)
               if (Path(bundle_dir) / name).is_file())
