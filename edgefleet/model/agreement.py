"""How far a quantized model's task outputs are from FP32's, per task, and the targets they must meet.

embed: cosine per text (mean, min) and nearest-neighbour agreement (evaluate.Accuracy).
classify: top-1 agreement (the same label) and the largest probability difference per text
(max and mean over texts).
qa: exact span agreement (the same start and end character) and the answer score difference.

Targets (Target's defaults), chosen for what a user of each task sees:
- embed: mean cosine >= 0.998, min >= 0.99 (the project's accuracy target since the start).
- classify: top-1 agreement >= 0.99 and no probability off by more than 0.05. A label flips
  only where FP32's top two are close; 0.99 lets about one text in a hundred flip (one of the
  126 check texts), which is what INT8 error does to near-ties, while a systematic problem
  (a broken scale, a wrong head) flips many. 0.05 bounds what a threshold on the score (e.g.
  "act only when p >= 0.8") can see change; the goldens' device tolerance is 0.02, INT8 vs FP32
  is the larger error.
- qa: span agreement >= 0.95 and no score off by more than 0.05. A span is the argmax over every
  (start, end) pair of the context, so near-ties are far more frequent than for three labels,
  and a tied alternative is usually the same answer one token longer or shorter; 0.95 keeps
  such shifts rare (2 of the 40 check pairs) while a damaged model misses most spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.model.evaluate import Accuracy

__all__ = ["ClassifyAgreement", "QaAgreement", "Target", "classify_agreement", "qa_agreement",
           "loss_of", "rank_of"]


@dataclass(frozen=True)
class ClassifyAgreement:
    """Per text: the same top label as the reference, and the largest |p - p_ref| over labels."""

    same_label: np.ndarray
    prob_diffs: np.ndarray

    @property
    def top1(self) -> float:
        return float(self.same_label.mean())

    @property
    def max_diff(self) -> float:
        return float(self.prob_diffs.max())

    @property
    def mean_diff(self) -> float:
        return float(self.prob_diffs.mean())

    def as_dict(self) -> dict:
        return {"top1_agreement": round(self.top1, 4), "max_prob_diff": round(self.max_diff, 6),
                "mean_prob_diff": round(self.mean_diff, 6)}


@dataclass(frozen=True)
class QaAgreement:
    """Per pair: the same (start, end) character span as the reference, and |score - score_ref|."""

    same_span: np.ndarray
    score_diffs: np.ndarray

    @property
    def spans(self) -> float:
        return float(self.same_span.mean())

    @property
    def max_diff(self) -> float:
        return float(self.score_diffs.max())

    @property
    def mean_diff(self) -> float:
        return float(self.score_diffs.mean())

    def as_dict(self) -> dict:
        return {"span_agreement": round(self.spans, 4),
                "max_score_diff": round(self.max_diff, 6),
                "mean_score_diff": round(self.mean_diff, 6)}


Agreement = Accuracy | ClassifyAgreement | QaAgreement


def classify_agreement(probabilities: np.ndarray, reference: np.ndarray) -> ClassifyAgreement:
    """Compare (texts x labels) probabilities with the reference's."""
    probabilities, reference = np.asarray(probabilities), np.asarray(reference)
    if probabilities.shape != reference.shape or not probabilities.size:
        raise ValueError(f"probabilities {probabilities.shape} vs reference {reference.shape}")
    return ClassifyAgreement(
        same_label=probabilities.argmax(axis=1) == reference.argmax(axis=1),
        prob_diffs=np.abs(probabilities - reference).max(axis=1))


def qa_agreement(answers: list[dict], reference: list[dict]) -> QaAgreement:
    """Compare answers ({"start", "end", "score"} per pair) with the reference's."""
    if len(answers) != len(reference) or not answers:
        raise ValueError(f"{len(answers)} answers vs {len(reference)} in the reference")
    return QaAgreement(
        same_span=np.array([(a["start"], a["end"]) == (r["start"], r["end"])
                            for a, r in zip(answers, reference, strict=True)]),
        score_diffs=np.array([abs(a["score"] - r["score"])
                              for a, r in zip(answers, reference, strict=True)]))


def loss_of(agreement: Agreement) -> float:
    """Return one number, 0 for perfect, that grows as the outputs drift (ranks op sensitivity)."""
    if isinstance(agreement, Accuracy):
        return 1.0 - agreement.mean
    if isinstance(agreement, ClassifyAgreement):
        return (1.0 - agreement.top1) + agreement.mean_diff
    return (1.0 - agreement.spans) + agreement.mean_diff


def rank_of(agreement: Agreement) -> tuple[float, float]:
    """Return a sort key, larger is more accurate (picks the best when nothing meets the target)."""
    if isinstance(agreement, Accuracy):
        return agreement.min, agreement.mean
    if isinstance(agreement, ClassifyAgreement):
        return agreement.top1, -agreement.max_diff
    return agreement.spans, -agreement.max_diff


@dataclass(frozen=True)
class Target:
    """The agreement with FP32 a quantized model must reach, per task (see the module doc)."""

    min_cosine: float = 0.99
    mean_cosine: float = 0.998
    top1_agreement: float = 0.99
    max_prob_diff: float = 0.05
    span_agreement: float = 0.95
    max_score_diff: float = 0.05

    def met(self, agreement: Agreement) -> bool:
        if isinstance(agreement, Accuracy):
            return agreement.min >= self.min_cosine and agreement.mean >= self.mean_cosine
        if isinstance(agreement, ClassifyAgreement):
            return agreement.top1 >= self.top1_agreement and agreement.max_diff <= self.max_prob_diff
        return agreement.spans >= self.span_agreement and agreement.max_diff <= self.max_score_diff

    def for_task(self, task: str) -> dict[str, float]:
        """Return the task's thresholds by name (the keys of the task's metrics)."""
        keys = {"embed": ("mean_cosine", "min_cosine"),
                "classify": ("top1_agreement", "max_prob_diff"),
                "qa": ("span_agreement", "max_score_diff")}[task]
        return {key: getattr(self, key) for key in keys}

    def describe(self, task: str) -> str:
        """Return the task's target in words, e.g. for a table title."""
        return {"embed": f"mean cosine >= {self.mean_cosine}, min >= {self.min_cosine}",
                "classify": f"top-1 agreement >= {self.top1_agreement}, max |dp| <= "
                            f"{self.max_prob_diff}",
                "qa": f"span agreement >= {self.span_agreement}, max |dscore| <= "
                      f"{self.max_score_diff}"}[task]
