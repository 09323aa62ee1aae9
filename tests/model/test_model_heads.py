"""Classification and QA bundles from tiny random BERTs, against transformers on the same weights.

FP32 ONNX: logits within 1e-4 of transformers. INT8 (the bundle through edge_runtime): label
probabilities and span scores within 0.02 (the goldens' tolerance), the same label wherever
transformers' top two differ by more than that, the same best span wherever the FP32 best
span beats the runner-up clearly.
"""

import json

import edge_runtime
import numpy as np
import onnxruntime as ort
import pytest
from edge_runtime.heads import TaskError, softmax
from tokenizers import Tokenizer

from edgefleet.model.bundle import verify
from edgefleet.model.tiny import TINY_LABELS

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "what is an edge device?",
         "int8 onnx model on a small arm board", "a", "good day", "bad old cat",
         "new big dog sat on the mat", "one two three", "fleet deploy test run",
         " ".join(["data"] * 200)]
PAIRS = [("what jumps?", "the quick brown fox jumps over the lazy dog"),
         ("who sat on the mat?", "a cat sat on the mat and a dog sat by the door"),
         ("where does the model run?", "the int8 onnx model runs on a small arm board at the edge"),
         ("what is it?", "hello world"),
         ("when?", " ".join(["one two three time day"] * 30)),  # context cut to max_seq_len
         ("how fast is the board?", "the new board is fast, the old board was small and slow")]
TOL = 0.02


def _transformers(model_dir, task):
    import transformers

    auto = {"classify": "AutoModelForSequenceClassification",
            "qa": "AutoModelForQuestionAnswering"}[task]
    return getattr(transformers, auto).from_pretrained(str(model_dir),
                                                       attn_implementation="eager").eval()


def _tokenizer(fp32_dir, task):
    tokenizer = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    if task == "qa":
        tokenizer.enable_truncation(max_length=64, strategy="only_second")
    return tokenizer


def _feeds(encoding):
    return {"input_ids": np.array([encoding.ids]),
            "attention_mask": np.array([encoding.attention_mask]),
            "token_type_ids": np.array([encoding.type_ids])}


def _torch_outputs(model, encoding):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in _feeds(encoding).items()})
    if "logits" in out:
        return [out["logits"].numpy()]
    return [out["start_logits"].numpy(), out["end_logits"].numpy()]


def brute_force_spans(start, end, sequence_ids, max_len):
    """Every valid (score, start, end) by plain loops, best first (reference for best_span)."""
    context = [i for i, sid in enumerate(sequence_ids) if sid == 1]
    spans = [(start[i] + end[j], i, j) for i in context for j in context
             if i <= j and j - i + 1 <= max_len]
    return sorted(spans, key=lambda span: (-span[0], span[1], span[2]))


def test_bundles_record_task_labels_and_answer_length(tiny_classify, tiny_qa):
    classify, qa = verify(tiny_classify["bundle_dir"]), verify(tiny_qa["bundle_dir"])
    assert (classify.task, classify.labels, classify.outputs) == (
        "classify", TINY_LABELS, ["logits"])
    assert (qa.task, qa.max_answer_len, qa.outputs) == ("qa", 30, ["start_logits", "end_logits"])
    assert classify.pooling is None and qa.labels is None
    assert classify.quantization.per_channel and qa.quantization.smooth_alpha
    for paths in (tiny_classify, tiny_qa):
        meta = json.loads((paths["fp32_dir"] / "export.json").read_text())
        assert meta["fused_ops"]["Attention"] == 2
        fp32, int8 = ((paths[key] / "model.onnx").stat().st_size for key in ("fp32_dir",
                                                                                 "bundle_dir"))
        assert int8 < fp32


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_fp32_onnx_logits_match_transformers(tiny_classify, tiny_qa, task):
    paths = tiny_classify if task == "classify" else tiny_qa
    model = _transformers(paths["model_dir"], task)
    tokenizer = _tokenizer(paths["fp32_dir"], task)
    session = ort.InferenceSession(str(paths["fp32_dir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for item in (TEXTS if task == "classify" else PAIRS):
        encoding = tokenizer.encode(*([item] if task == "classify" else item))
        for got, want in zip(session.run(None, _feeds(encoding)), _torch_outputs(model, encoding)):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_int8_classify_matches_transformers(tiny_classify):
    model = _transformers(tiny_classify["model_dir"], "classify")
    tokenizer = _tokenizer(tiny_classify["fp32_dir"], "classify")
    runtime = edge_runtime.load(tiny_classify["bundle_dir"], threads=1)
    single = [runtime.classify([text])[0] for text in TEXTS]
    batched = runtime.classify(TEXTS)  # one padded batch
    worst = 0.0
    for text, one, many in zip(TEXTS, single, batched):
        want = softmax(_torch_outputs(model, tokenizer.encode(text))[0][0])
        for got in (one, many):
            diff = max(abs(want[i] - got["scores"][label]) for i, label in enumerate(TINY_LABELS))
            worst = max(worst, diff)
            assert diff <= TOL, (text, want, got)
            top2 = np.sort(want)[-2:]
            if top2[1] - top2[0] > 2 * TOL:
                assert got["label"] == TINY_LABELS[int(want.argmax())]
            assert got["score"] == max(got["scores"].values())
            assert sum(got["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    print(f"\ntiny classify INT8 vs transformers: max probability difference {worst:.4f}")


def test_int8_qa_matches_transformers(tiny_qa):
    model = _transformers(tiny_qa["model_dir"], "qa")
    tokenizer = _tokenizer(tiny_qa["fp32_dir"], "qa")
    runtime = edge_runtime.load(tiny_qa["bundle_dir"], threads=1)
    same = 0
    for question, context in PAIRS:
        encoding = tokenizer.encode(question, context)
        start, end = (row[0] for row in _torch_outputs(model, encoding))
        spans = brute_force_spans(start, end, encoding.sequence_ids, runtime.meta["max_answer_len"])
        got = runtime.answer(question, context)
        (score, i, j), runner_up = spans[0], spans[1][0]
        want = (encoding.offsets[i][0], encoding.offsets[j][1])
        assert got["answer"] == context[got["start"]:got["end"]]
        assert got["end"] <= len(context) and got["start"] < got["end"]
        if (got["start"], got["end"]) == want:
            same += 1
            context_ids = [k for k, sid in enumerate(encoding.sequence_ids) if sid == 1]
            reference = (softmax(start[context_ids])[context_ids.index(i)]
                         * softmax(end[context_ids])[context_ids.index(j)])
            assert got["score"] == pytest.approx(reference, abs=TOL)
        else:  # INT8 may only pick another span where FP32 has a near tie
            assert score - runner_up < 0.1, (question, got, want)
    assert same >= len(PAIRS) - 1
    print(f"\ntiny QA INT8 vs transformers: same best span on {same} of {len(PAIRS)}")


def test_qa_long_context_is_truncated_and_long_question_is_an_input_error(tiny_qa):
    from edge_runtime.heads import InputError

    runtime = edge_runtime.load(tiny_qa["bundle_dir"], threads=1)
    question, context = PAIRS[4]
    got = runtime.answer(question, context)
    assert runtime.last_tokens == 64 and got["end"] < len(context)
    with pytest.raises(InputError, match="64 tokens"):
        runtime.answer(" ".join(["what"] * 80), "a cat")


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_selftest_passes_and_fails_on_a_changed_golden(tiny_classify, tiny_qa, task, tmp_path):
    import shutil

    from edge_runtime.selftest import selftest

    paths = tiny_classify if task == "classify" else tiny_qa
    result = selftest(edge_runtime.load(paths["bundle_dir"]), runs=2)
    assert result.passed and result.metric == "abs_diff" and result.worst <= TOL, result.reason
    assert set(result.latency_ms) >= {"p50", "p95", "p99"} and result.rss_mib > 0
    bundle = shutil.copytree(paths["bundle_dir"], tmp_path / "bundle")
    meta = json.loads((bundle / "bundle.json").read_text())
    if task == "classify":
        scores = meta["golden"]["scores"][0]
        top = max(scores, key=scores.get)
        scores[top] -= 0.05
    else:
        meta["golden"]["answers"][1]["score"] += 0.05
    (bundle / "bundle.json").write_text(json.dumps(meta))
    failed = selftest(edge_runtime.load(bundle), runs=1)
    assert not failed.passed and "index [" in failed.reason, failed.reason
    with pytest.raises(TaskError, match=f"is a '{task}' bundle, not 'embed'"):
        edge_runtime.load(bundle).embed(["x"])
