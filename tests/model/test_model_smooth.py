"""SmoothQuant graph rewrite on the tiny BERT: exact in FP32, with the fewest extra nodes."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from edgefleet.model.quantize import OUTLIER_CHANNELS
from edgefleet.model.smooth import activation_absmax, resolve_outliers, smooth

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "int8 onnx model"]


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("outliers", [False, True])
def test_smoothing_is_exact_in_fp32_and_adds_few_nodes(tiny, outliers):
    path = tiny["fp32_dir"] / "model.onnx"
    tokenizer = Tokenizer.from_file(str(tiny["fp32_dir"] / "tokenizer.json"))
    absmax = activation_absmax(path, tokenizer, TEXTS)
    model = onnx.load(str(path))
    split = resolve_outliers([n.name for n in model.graph.node if n.op_type == "MatMul"],
                             OUTLIER_CHANNELS) if outliers else {}
    smoothed = smooth(model, absmax, 0.8, outliers=split)
    enc = tokenizer.encode(TEXTS[1])
    feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
             "token_type_ids": np.array([enc.type_ids])}
    np.testing.assert_allclose(_run(smoothed, feeds), _run(model, feeds), rtol=1e-4, atol=1e-4)

    ops = Counter(node.op_type for node in smoothed.graph.node)
    before = Counter(node.op_type for node in model.graph.node)
    layers = before["Attention"]
    # one Mul per smoothed op except the attention output projection, folded into V
    assert ops["Mul"] - before["Mul"] == len(absmax) - layers
    assert not any(n.name.endswith("attention/output/dense/MatMul_smooth")
                   for n in smoothed.graph.node)
    if outliers:
        # one exact-path Add per split MatMul; the FFN output's bias Add right after its MatMul
        assert ops["Add"] - before["Add"] == 2 * layers
        names = [n.name for n in smoothed.graph.node]
        for node in smoothed.graph.node:
            if node.name.endswith("output/dense/MatMul") and "attention" not in node.name:
                (reader,) = [n for n in smoothed.graph.node if node.output[0] in n.input]
                assert reader.name.endswith("output/dense/Add")  # the bias
                assert names.index(reader.name) < names.index(f"{node.name}_outlier_add")
        assert ops["Gather"] - before["Gather"] == ops["MatMul"] - before["MatMul"] == 2 * layers
    else:
        assert ops["Add"] == before["Add"]


@pytest.mark.parametrize("fold_values, outlier_after_bias", [(False, True), (True, False),
                                                             (False, False)])
def test_each_rewrite_can_be_turned_off_and_stays_exact(tiny, fold_values, outlier_after_bias):
    path = tiny["fp32_dir"] / "model.onnx"
    tokenizer = Tokenizer.from_file(str(tiny["fp32_dir"] / "tokenizer.json"))
    absmax = activation_absmax(path, tokenizer, TEXTS)
    model = onnx.load(str(path))
    split = resolve_outliers([n.name for n in model.graph.node if n.op_type == "MatMul"],
                             OUTLIER_CHANNELS)
    smoothed = smooth(model, absmax, 0.8, outliers=split, fold_values=fold_values,
                      outlier_after_bias=outlier_after_bias)
    enc = tokenizer.encode(TEXTS[2])
    feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
             "token_type_ids": np.array([enc.type_ids])}
    np.testing.assert_allclose(_run(smoothed, feeds), _run(model, feeds), rtol=1e-4, atol=1e-4)

    names = [n.name for n in smoothed.graph.node]
    layers = Counter(n.op_type for n in model.graph.node)["Attention"]
    unfolded = [n for n in names if n.endswith("attention/output/dense/MatMul_smooth")]
    assert len(unfolded) == (0 if fold_values else layers)
    for node in smoothed.graph.node:
        if node.name.endswith("output/dense/MatMul") and "attention" not in node.name:
            (reader,) = [n for n in smoothed.graph.node if node.output[0] in n.input]
            # off: the exact share is added to the INT8 part first, the bias after it
            expected = "output/dense/Add" if outlier_after_bias else "MatMul_outlier_add"
            assert reader.name.endswith(expected)
