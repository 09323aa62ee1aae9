"""A text's INT8 result is the same alone or in any batch (any neighbours, any padding).

Per-tensor dynamic activation scales made a text's vector depend on the other texts in its call
(issue 20); per-row scales (edgefleet.model.per_row) and a softmax max over real keys only make
each row's arithmetic independent of the rest of the batch.
"""

import edge_runtime
import numpy as np
import pytest
from edge_runtime.selftest import selftest

TEXTS = ["ok", "Thanks!", "hello world", "the quick brown fox jumps over the lazy dog",
         "int8 onnx model on a small arm board", "a", " ".join(["data"] * 60),
         "what is an edge device?", "new big dog sat on the mat", "one two three"]
# each text alone, then in batches with different neighbours and padding
BATCHES = [TEXTS, TEXTS[::-1], TEXTS[:3] + [" ".join(["long"] * 120)], TEXTS[1::2]]


def _alone_and_batched(call):
    alone = {text: call([text])[0] for text in TEXTS}
    return [(alone[text], out) for batch in BATCHES
            for text, out in zip(batch, call(batch), strict=True) if text in alone]


def test_embed_is_batch_invariant(tiny):
    model = edge_runtime.load(tiny["bundle_dir"], threads=1)
    pairs = _alone_and_batched(model.embed)
    worst = min(float(np.dot(a, b)) for a, b in pairs)
    assert worst >= 0.9999, f"worst cosine alone vs batched {worst:.6f}"


def test_classify_is_batch_invariant(tiny_classify):
    model = edge_runtime.load(tiny_classify["bundle_dir"], threads=1)
    pairs = _alone_and_batched(model.classify)
    worst = max(abs(a["scores"][k] - b["scores"][k]) for a, b in pairs for k in a["scores"])
    assert worst <= 1e-4, f"largest probability difference alone vs batched {worst:.6f}"
    assert all(a["label"] == b["label"] for a, b in pairs)


def test_bundle_records_per_row_scales(tiny):
    from edgefleet.model.bundle import read_bundle

    assert read_bundle(tiny["bundle_dir"]).quantization.activation_scales == "per-row"


@pytest.mark.parametrize("task", ["embed", "classify"])
def test_selftest_runs_the_goldens_as_one_batch(tiny, tiny_classify, task, tmp_path):
    """A bundle whose batched outputs differ from its goldens fails the selftest."""
    bundle = {"embed": tiny, "classify": tiny_classify}[task]["bundle_dir"]
    model = edge_runtime.load(bundle, threads=1)
    assert selftest(model, runs=1).passed
    real_infer = model.infer

    def batch_dependent(feeds):  # what per-tensor scales did: batched rows come out different
        out = real_infer(feeds)
        return out if out.shape[0] == 1 else out + np.float32(0.5) * np.sign(out)[::-1]

    model.infer = batch_dependent
    result = selftest(model, runs=1)
    assert not result.passed and "one batch" in result.reason
