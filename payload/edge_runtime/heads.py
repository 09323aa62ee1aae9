"""Post-processing of the task heads: labels from classification logits, answer spans for QA."""

from __future__ import annotations

import numpy as np

__all__ = ["InputError", "TaskError", "softmax", "label_scores", "best_span", "answer_from"]


class InputError(ValueError):
    """An input the model cannot take as given (e.g. a question that fills max_seq_len)."""


class TaskError(ValueError):
    """The bundle was built for another task than the one asked for."""


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return softmax along axis, computed in float64 from the shifted logits."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def label_scores(logits: np.ndarray, labels: list[str]) -> list[dict]:
    """Return per row {"label": best, "score": its probability, "scores": {label: p}}."""
    probabilities = softmax(logits)
    results = []
    for row in probabilities:
        best = int(row.argmax())
        results.append({"label": labels[best], "score": float(row[best]),
                        "scores": {label: float(p) for label, p in zip(labels, row, strict=False)}})
    return results


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray,
              max_answer_len: int) -> tuple[int, int, float] | None:
    """Return (start, end, score) of the best span of allowed tokens, or None if none is.

    A span is valid when start <= end, both tokens are allowed (the context's, not the
    question's or special tokens) and it has at most max_answer_len tokens. It maximizes
    start_logit + end_logit; score is p_start * p_end with softmax over the allowed tokens.
    Ties go to the earliest start, then the shortest span.
    """
    positions = np.flatnonzero(np.asarray(allowed, dtype=bool))
    if not len(positions) or max_answer_len < 1:
        return None
    starts = np.asarray(start_logits, dtype=np.float64)[positions]
    ends = np.asarray(end_logits, dtype=np.float64)[positions]
    gap = positions[None, :] - positions[:, None]  # end position - start position
    valid = (gap >= 0) & (gap < max_answer_len)
    totals = np.where(valid, starts[:, None] + ends[None, :], -np.inf)
    i, j = np.unravel_index(int(totals.argmax()), totals.shape)
    score = softmax(starts)[i] * softmax(ends)[j]
    return int(positions[i]), int(positions[j]), float(score)


def answer_from(start_logits: np.ndarray, end_logits: np.ndarray, sequence_ids: list,
                offsets: list[tuple[int, int]], context: str, max_answer_len: int) -> dict:
    """Return {"answer", "score", "start", "end"} (character offsets into context).

    sequence_ids marks each token's sequence (1 = context); offsets are the tokens' character
    spans in their own sequence, as the tokenizers library gives them for a pair.
    """
    allowed = np.array([sid == 1 for sid in sequence_ids], dtype=bool)
    span = best_span(start_logits, end_logits, allowed, max_answer_len)
    if span is None:
        raise InputError("the context is empty after tokenization and truncation")
    first, last, score = span
    start, end = offsets[first][0], offsets[last][1]
    return {"answer": context[start:end], "score": score, "start": start, "end": end}
