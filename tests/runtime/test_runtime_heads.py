"""Post-processing of the heads on hand-made logits: best answer span, labels, softmax."""

import numpy as np
import pytest
from edge_runtime.heads import InputError, answer_from, best_span, label_scores, softmax

# token layout: [CLS] q q [SEP] c c c c c [SEP]  (context = positions 4..8)
SEQ = [None, 0, 0, None, 1, 1, 1, 1, 1, None]
CONTEXT = np.array([sid == 1 for sid in SEQ])


def logits(**at):
    """Return a zero vector over SEQ with the given position=value entries (p3=5.0)."""
    row = np.zeros(len(SEQ))
    for key, value in at.items():
        row[int(key[1:])] = value
    return row


@pytest.mark.parametrize("start, end, max_len, expected", [
    # the plain case: best start and best end form a valid span
    (logits(p5=5), logits(p7=5), 30, (5, 7)),
    # best start (p8) after best end (p5): never start > end; best valid pair wins
    (logits(p8=9, p4=4), logits(p5=9, p8=1), 30, (4, 5)),
    # the best logits sit in the question (p1, p2) and on [CLS]: only context tokens count
    (logits(p0=20, p1=10, p6=2), logits(p2=10, p0=20, p7=2), 30, (6, 7)),
    # span crossing into the question: start in question, end in context -> start moves
    (logits(p2=10, p4=1), logits(p6=10), 30, (4, 6)),
    # max answer length: 4..8 is 5 tokens; with max 3 the best is a 3-token span
    (logits(p4=5, p6=4), logits(p8=5, p7=1), 3, (6, 8)),
    # max length 1: start == end
    (logits(p4=5, p6=4), logits(p8=5, p6=4), 1, (6, 6)),
    # all equal: the earliest start and the shortest span
    (logits(), logits(), 30, (4, 4)),
    # the last special token ([SEP]) is never an end
    (logits(p8=1), logits(p9=50, p8=1), 30, (8, 8)),
])
def test_best_span(start, end, max_len, expected):
    first, last, score = best_span(start, end, CONTEXT, max_len)
    assert (first, last) == expected
    ctx = np.flatnonzero(CONTEXT)
    p_start, p_end = softmax(start[ctx]), softmax(end[ctx])
    assert score == pytest.approx(p_start[list(ctx).index(first)] * p_end[list(ctx).index(last)])
    assert 0.0 < score <= 1.0


def test_best_span_agrees_with_brute_force_on_random_logits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 40))
        allowed = rng.random(n) < 0.7
        start, end = rng.normal(size=n), rng.normal(size=n)
        max_len = int(rng.integers(1, 8))
        spans = [(start[i] + end[j], i, j) for i in range(n) for j in range(n)
                 if allowed[i] and allowed[j] and i <= j and j - i < max_len]
        got = best_span(start, end, allowed, max_len)
        if not spans:
            assert got is None
            continue
        best = max(spans, key=lambda s: (s[0], -s[1], -s[2]))
        assert got[:2] == best[1:]


@pytest.mark.parametrize("allowed, max_len", [(np.zeros(5, bool), 30), (CONTEXT, 0)])
def test_best_span_none(allowed, max_len):
    assert best_span(np.zeros(len(allowed)), np.zeros(len(allowed)), allowed, max_len) is None


def test_answer_from_uses_context_offsets():
    context = "a cat sat on mats"
    offsets = [(0, 0), (0, 3), (4, 6), (0, 0), (0, 1), (2, 5), (6, 9), (10, 12), (13, 17), (0, 0)]
    got = answer_from(logits(p5=5), logits(p6=5), SEQ, offsets, context, 30)
    assert got == {"answer": "cat sat", "score": got["score"], "start": 2, "end": 9}
    with pytest.raises(InputError, match="context is empty"):
        answer_from(np.zeros(4), np.zeros(4), [None, 0, None, None], [(0, 0)] * 4, "", 30)


def test_label_scores_and_softmax():
    rows = label_scores(np.array([[0.0, 2.0, 1.0], [1000.0, 0.0, 0.0]]), ["a", "b", "c"])
    assert [row["label"] for row in rows] == ["b", "a"]
    assert sum(rows[0]["scores"].values()) == pytest.approx(1.0)
    assert rows[0]["score"] == pytest.approx(np.exp(2) / (1 + np.exp(2) + np.exp(1)))
    assert rows[1]["score"] == 1.0  # no overflow on large logits
    np.testing.assert_allclose(softmax(np.array([[1.0, 1.0]])), [[0.5, 0.5]])
