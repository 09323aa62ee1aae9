"""bundle.json validation, hash verification and the file helpers (no model needed)."""

import copy
import json

import pytest

from edgefleet.model.bundle import BundleError, parse_bundle, read_bundle, verify
from edgefleet.model.files import atomic_dir, file_record
from edgefleet.model.quantize import bundle_name

SHA = "a" * 64


def _valid(tmp_path=None) -> dict:
    files = {name: {"sha256": SHA, "bytes": 1} for name in ("model.onnx", "tokenizer.json")}
    if tmp_path is not None:
        for name in files:
            (tmp_path / name).write_bytes(name.encode())
            files[name] = file_record(tmp_path / name)
    return {
        "format": 1, "name": "tiny-int8", "task": "embed", "max_seq_len": 64,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "outputs": ["last_hidden_state"], "pooling": "mean", "normalize": True,
        "source_model": {"name": "tiny", "dir": "/x", "config_sha256": SHA},
        "quantization": {"method": "dynamic", "weight_type": "QInt8", "per_channel": True,
                         "onnxruntime": "1.32.0"},
        "files": files,
        "golden": {"texts": ["a", "b"], "embeddings": [[1.0, 0.0], [0.0, 1.0]],
                   "min_cosine": 0.999},
        "created_by": "edgefleet 0.1.0",
    }


def _set(doc: dict, dotted: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("key, value, expected", [
    ("format", 2, "key 'format'"),
    ("task", "translate", "key 'task'"),
    ("max_seq_len", "long", "key 'max_seq_len'"),
    ("name", "bad name/", "key 'name'"),
    ("pooling", KeyError, "key 'pooling' is required for task 'embed'"),
    ("labels", ["a", "b"], "key 'labels' is not allowed for task 'embed'"),
    ("task", "classify", "key 'pooling' is not allowed for task 'classify'"),
    ("golden.min_cosine", 1.5, "key 'golden.min_cosine'"),
    ("golden.texts", ["only one"], "1 texts but 2 embeddings"),
    ("golden.embeddings", [[1.0], [1.0, 2.0]], "one width"),
    ("files.model.onnx", KeyError, "files must list model.onnx"),
    ("quantization.weight_type", "QInt4", "key 'quantization.weight_type'"),
    ("source_model.config_sha256", "xyz", "key 'source_model.config_sha256'"),
    ("surprise", 1, "key 'surprise': Extra inputs are not permitted"),
])
def test_invalid_bundle_names_key(key, value, expected):
    doc = _valid()
    if key == "files.model.onnx":
        doc = copy.deepcopy(doc)
        del doc["files"]["model.onnx"]
    else:
        doc = _set(doc, key, value)
    with pytest.raises(BundleError) as error:
        parse_bundle(doc, "some/bundle.json")
    assert "some/bundle.json" in str(error.value)
    assert expected in str(error.value)


def test_valid_bundle_parses():
    assert parse_bundle(_valid()).golden.min_cosine == 0.999


@pytest.mark.parametrize("content, expected", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_read_bundle_errors_name_the_file(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "bundle.json").write_text(content)
    with pytest.raises(BundleError, match=expected) as error:
        read_bundle(tmp_path)
    assert str(tmp_path / "bundle.json") in str(error.value)


@pytest.mark.parametrize("change, expected", [
    (lambda d: (d / "tokenizer.json").write_bytes(b"tokenizer.jsoX"), "tokenizer.json: sha256"),
    (lambda d: (d / "model.onnx").write_bytes(b"model.onnx!"), "model.onnx: sha256"),
    (lambda d: (d / "model.onnx").unlink(), "model.onnx: missing"),
])
def test_verify_catches_changed_files(tmp_path, change, expected):
    (tmp_path / "bundle.json").write_text(json.dumps(_valid(tmp_path)))
    assert verify(tmp_path).name == "tiny-int8"
    change(tmp_path)
    with pytest.raises(BundleError, match=expected):
        verify(tmp_path)


def test_atomic_dir_replaces_target_and_keeps_it_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text("two")
            raise RuntimeError("boom")
    assert (target / "f").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "g").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("source, expected", [
    ("sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2-int8"),
    ("hf", "hf-int8"),
    ("org/Weird Name!", "weird-name-int8"),
])
def test_bundle_name(source, expected):
    assert bundle_name(source) == expected
