"""Arch-stable graph rewrite on the tiny BERT: same outputs in FP32, only ops that give the same
bits on x86 and arm64, and INT8 MatMuls without a fused bias once ORT has optimized the graph."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from edgefleet.model.evaluate import encode_feeds
from edgefleet.model.stable import EXACT_SUFFIX, stabilize

# measured to differ in the last bit between x86 (AVX-512) and arm64 (NEON) on the same input
UNSTABLE = {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
            "QEmbedLayerNormalization", "Attention", "QAttention", "Softmax", "ReduceMean",
            "ReduceSum"}


def _session(model, path=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if path is not None:
        options.optimized_model_filepath = str(path)
    return ort.InferenceSession(model.SerializeToString() if not isinstance(model, str) else model,
                                options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("text, pad", [("the quick brown fox jumps over the lazy dog", 0),
                                       ("hello world", 12)])
def test_stable_graph_gives_the_same_outputs_in_fp32(tiny, text, pad):
    model = onnx.load(str(tiny["fp32_dir"] / "model.onnx"))
    stable = stabilize(model)
    onnx.checker.check_model(stable)
    tokenizer = Tokenizer.from_file(str(tiny["fp32_dir"] / "tokenizer.json"))
    feeds = encode_feeds(tokenizer, text, {i.name for i in model.graph.input}, length=pad)
    real = int(feeds["attention_mask"].sum())  # padded keys are masked, padded rows are not read
    expected = _session(model).run(None, feeds)[0][:, :real]
    np.testing.assert_allclose(_session(stable).run(None, feeds)[0][:, :real], expected,
                               rtol=1e-4, atol=1e-4)
    before = Counter(n.op_type for n in model.graph.node)
    after = Counter(n.op_type for n in stable.graph.node)
    assert before["Attention"] and before["LayerNormalization"]  # the rewrite had work to do
    assert not UNSTABLE & set(after)


def test_stable_bundle_keeps_exact_ops_fp32_and_bias_out_of_int8_matmuls(tiny, tmp_path):
    from edgefleet.model.quantize import Recipe, quantize

    quantize(tiny["fp32_dir"], tmp_path / "bundle", recipe=Recipe(arch_stable=True))
    graph = onnx.load(str(tmp_path / "bundle" / "model.onnx")).graph
    exact = [n for n in graph.node if n.name.endswith(EXACT_SUFFIX)]
    assert exact and {n.op_type for n in exact} == {"MatMul"}
    assert not UNSTABLE & {n.op_type for n in graph.node}
    _session(str(tmp_path / "bundle" / "model.onnx"), tmp_path / "optimized.onnx")
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node
    # the INT8 MatMul as ORT fuses it (per-row scales: MatMulIntegerToFloat) and where its bias
    # input would be
    bias_input = {"DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6}
    int8 = [n for n in optimized if n.op_type in bias_input]
    assert int8 and not any(len(n.input) > bias_input[n.op_type] and n.input[bias_input[n.op_type]]
                            for n in int8)
    assert not UNSTABLE & {n.op_type for n in optimized}
