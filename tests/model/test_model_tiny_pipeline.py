"""Tiny random BERT through export -> quantize -> bundle -> edge_runtime, against transformers."""

import json
import shutil

import edge_runtime
import numpy as np
import onnxruntime as ort
import pytest
from edge_runtime.model import l2_normalize, mean_pool
from tokenizers import Tokenizer

from edgefleet.model.bundle import BundleError, verify
from edgefleet.model.export import default_max_seq_len

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog",
         "what is an edge device?", "int8 onnx model on a small arm board", "a",
         " ".join(["data"] * 200)]


def torch_embed(model_dir, tokenizer_path, texts):
    """Mean-pooled, normalized transformers outputs on the same weights and token ids."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer.encode(text)
            ids = torch.tensor([enc.ids])
            mask = torch.tensor([enc.attention_mask])
            hidden = model(input_ids=ids, attention_mask=mask,
                           token_type_ids=torch.tensor([enc.type_ids])).last_hidden_state
            rows.append(mean_pool(hidden.numpy(), mask.numpy())[0])
    return l2_normalize(np.stack(rows))


def fp32_embed(fp32_dir, texts, batch):
    """Run the FP32 export directly with ORT, batched (padded) or one text per call."""
    session = ort.InferenceSession(str(fp32_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    groups = [texts] if batch else [[t] for t in texts]
    rows = []
    for group in groups:
        encs = tokenizer.encode_batch(group)
        feeds = {"input_ids": np.array([e.ids for e in encs]),
                 "attention_mask": np.array([e.attention_mask for e in encs]),
                 "token_type_ids": np.array([e.type_ids for e in encs])}
        hidden = session.run(None, feeds)[0]
        rows.append(mean_pool(hidden, feeds["attention_mask"]))
    return l2_normalize(np.concatenate(rows))


def cos(a, b):
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


def test_export_fuses_attention_and_resets_tokenizer(tiny):
    meta = json.loads((tiny["fp32_dir"] / "export.json").read_text())
    assert meta["fused_ops"]["Attention"] == 2
    assert meta["max_seq_len"] == default_max_seq_len(tiny["model_dir"]) == 64
    saved = json.loads((tiny["fp32_dir"] / "tokenizer.json").read_text())
    shipped = json.loads((tiny["model_dir"] / "tokenizer.json").read_text())
    assert shipped["padding"] is not None and saved["padding"] is None
    assert saved["truncation"]["max_length"] == 64


@pytest.mark.parametrize("batch", [False, True])
def test_fp32_onnx_matches_transformers(tiny, batch):
    expected = torch_embed(tiny["model_dir"], tiny["fp32_dir"] / "tokenizer.json", TEXTS)
    actual = fp32_embed(tiny["fp32_dir"], TEXTS, batch)
    assert cos(actual, expected).min() > 0.9999


def test_int8_bundle_close_to_transformers(tiny):
    expected = torch_embed(tiny["model_dir"], tiny["fp32_dir"] / "tokenizer.json", TEXTS)
    model = edge_runtime.load(tiny["bundle_dir"])
    actual = np.stack([model.embed([t])[0] for t in TEXTS])
    values = cos(actual, expected)
    print(f"tiny INT8 vs transformers: mean {values.mean():.5f} min {values.min():.5f}")
    assert values.mean() > 0.98 and values.min() > 0.95


def test_runtime_output_contract(tiny):
    model = edge_runtime.load(tiny["bundle_dir"], threads=1)
    out = model.embed(TEXTS)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), model.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert model.embed([]).shape == (0, model.dim)
    assert model.tokenize([TEXTS[-1]])["input_ids"].shape == (1, 64)  # truncated
    assert model.tokenize(["hello world"])["input_ids"].shape == (1, 4)  # batch 1: no padding
    assert edge_runtime.load(tiny["bundle_dir"], max_seq_len=16).max_seq_len == 16
    assert edge_runtime.load(tiny["bundle_dir"], max_seq_len=1000).max_seq_len == 64


def test_bundle_verifies_and_golden_passes(tiny):
    from edge_runtime.selftest import selftest

    bundle = verify(tiny["bundle_dir"])
    assert bundle.name == "tiny-bert-int8" and bundle.quantization.per_channel
    sizes = [(tiny[key] / "model.onnx").stat().st_size for key in ("bundle_dir", "fp32_dir")]
    assert sizes[0] < sizes[1]
    result = selftest(edge_runtime.load(tiny["bundle_dir"]), runs=1)
    assert result.passed, result.reason


def test_verify_catches_changed_tokenizer(tiny, tmp_path):
    copy = shutil.copytree(tiny["bundle_dir"], tmp_path / "bundle")
    data = json.loads((copy / "tokenizer.json").read_text())
    data["truncation"]["max_length"] = 32
    (copy / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="tokenizer.json"):
        verify(copy)


def test_weights_live_beside_the_graph_and_load_either_way(tiny):
    """The bundle's large initializers are in model.onnx.data (memory-mapped by ORT), listed and
    hashed in bundle.json; loading from the path and from bytes gives the same vectors."""
    import onnx

    bundle_dir = tiny["bundle_dir"]
    bundle = verify(bundle_dir)
    assert {"model.onnx", "model.onnx.data", "tokenizer.json"} == set(bundle.files)
    graph = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in graph.graph.initializer if len(t.raw_data) >= 4096]
    assert external and not inline
    by_path = edge_runtime.load(bundle_dir).embed(TEXTS[:3])
    by_bytes = edge_runtime.load(bundle_dir, from_bytes=True).embed(TEXTS[:3])
    np.testing.assert_array_equal(by_path, by_bytes)
