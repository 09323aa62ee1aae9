"""The bundle.json model: typed, validated on read, with file-hash verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.model.files import file_record

__all__ = ["Bundle", "BundleError", "FileRecord", "Golden", "read_bundle", "verify",
           "hash_problems", "BUNDLE_JSON", "REQUIRED_FILES"]

BUNDLE_JSON = "bundle.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")
SHA256 = r"^[0-9a-f]{64}$"


class BundleError(ValueError):
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

    @model_validator(mode="after")
    def _shapes_match(self) -> "Golden":
        if len(self.texts) != len(self.embeddings):
            raise ValueError(f"{len(self.texts)} texts but {len(self.embeddings)} embeddings")
        dims = {len(row) for row in self.embeddings}
        if len(dims) != 1 or 0 in dims:
            raise ValueError(f"embeddings must be non-empty rows of one width, got widths {dims}")
        return self


class Bundle(_Strict):
    format: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Literal["embed"]
    max_seq_len: int = Field(gt=1)
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    pooling: Literal["mean", "cls"]
    normalize: bool
    source_model: SourceModel
    quantization: Quantization
    # ONNX Runtime session config entries the runtime should set (add_session_config_entry)
    session_config: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileRecord]
    golden: Golden
    created_by: str
    inputs_sha256: str | None = Field(default=None, pattern=SHA256)

    @model_validator(mode="after")
    def _required_files(self) -> "Bundle":
        missing = [name for name in REQUIRED_FILES if name not in self.files]
        if missing:
            raise ValueError(f"files must list {', '.join(missing)}")
        if "input_ids" not in self.inputs:
            raise ValueError("inputs must include input_ids")
        return self


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
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
