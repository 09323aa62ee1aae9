"""A classify graph's last layer after its attention runs on the [CLS] row only: the same logits,
and the default classify bundle carries it; graphs it cannot prove safe are left alone."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from edgefleet.model.cls_rows import CLS_SLICE_SUFFIX, cls_row_last_layer
from edgefleet.model.evaluate import encode_feeds
from edgefleet.model.graph import graph_of
from edgefleet.model.stable import stabilize


def _logits(model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("norms", [True, False])
@pytest.mark.parametrize("text, pad", [("the quick brown fox jumps over the lazy dog", 0),
                                       ("hello world", 12)])
def test_the_cls_row_graph_gives_the_same_logits(tiny_classify, norms, text, pad):
    stable = stabilize(onnx.load(str(tiny_classify["fp32_dir"] / "model.onnx")), norms=norms)
    sliced = cls_row_last_layer(stable)
    assert sliced is not None
    onnx.checker.check_model(sliced)
    assert sum(n.name.endswith(CLS_SLICE_SUFFIX) for n in sliced.graph.node) == 2
    tokenizer = Tokenizer.from_file(str(tiny_classify["fp32_dir"] / "tokenizer.json"))
    feeds = encode_feeds(tokenizer, text, {i.name for i in stable.graph.input}, length=pad)
    np.testing.assert_allclose(_logits(sliced, feeds), _logits(stable, feeds), rtol=0, atol=1e-6)


def test_graphs_that_read_every_token_are_left_alone(tiny, tiny_qa):
    """Embed (mean pooling over every token) and qa (a logit per token) need every row."""
    for paths in (tiny, tiny_qa):
        assert cls_row_last_layer(stabilize(onnx.load(str(paths["fp32_dir"] / "model.onnx")))) is None


def test_the_default_classify_bundle_runs_its_last_layer_on_the_cls_row(tiny_classify, tmp_path):
    """With per-row INT8 scales the [CLS] row's INT8 inputs are the same either way, and the
    slices come after SmoothQuant's calibration: the same probabilities as every row."""
    import edge_runtime

    from edgefleet.model.evaluate import read_texts
    from edgefleet.model.quantize import Recipe, build_graph, default_fp32_nodes, quantize

    fp32_dir = tiny_classify["fp32_dir"]
    for fp32_nodes in ((), default_fp32_nodes(fp32_dir)):
        recipe = Recipe(fp32_nodes=fp32_nodes)
        quantize(fp32_dir, tmp_path / "sliced", name="t", recipe=recipe)
        names = [n.name for n in graph_of(tmp_path / "sliced" / "model.onnx").node]
        assert sum(name.endswith(CLS_SLICE_SUFFIX) for name in names) == 2
        build_graph(fp32_dir, recipe, tmp_path / "rows.onnx", cls_row=False)
        quantize(fp32_dir, tmp_path / "rows", name="t", recipe=recipe, graph=tmp_path / "rows.onnx")
        texts = read_texts()[:20]
        sliced, rows = (edge_runtime.load(tmp_path / name) for name in ("sliced", "rows"))
        for text in texts:
            got, expected = sliced.classify([text])[0]["scores"], rows.classify([text])[0]["scores"]
            assert got == pytest.approx(expected, abs=1e-6)
