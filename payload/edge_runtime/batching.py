"""Micro-batching of concurrent requests: when it is safe, and how jobs are grouped by length.

A batch changes a text's neighbours and its padding. That is only safe for a bundle whose
outputs do not depend on them: FP32 graphs, and quantized ones that declare it in bundle.json
(`"batch_invariant": true`), and INT8 whose `quantization.activation_scales` is `per-row`,
`static` or `none`. Dynamic INT8 with one
activation scale per call is not: a client's vector would depend on strangers' texts. So
`batching.enabled: auto` (the default) batches only those bundles; `true` forces it (the user
accepts the dependence), `false` turns it off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_runtime.config import BatchingConfig

__all__ = ["BATCHED_TASKS", "Decision", "decide", "group_by_length", "job_size", "run_grouped"]

log = logging.getLogger("edge_runtime")
BATCHED_TASKS = ("embed", "classify")  # QA answers one (question, context) pair a call
# A text joins a group while the group's longest stays within this many tokens of its shortest
# (or a quarter more than it, for long texts): padding beyond that costs more than the batch saves.
PAD_SLACK_TOKENS = 4
PAD_SLACK_RATIO = 0.25
INVARIANT_SCALES = ("per-row", "static", "none")


@dataclass(frozen=True)
class Decision:
    """Whether this service batches, and why (shown in /v1/info and the log)."""

    enabled: bool
    reason: str


def decide(config: BatchingConfig, meta: dict) -> Decision:
    """Decide from runtime.yaml's batching.enabled and the bundle's metadata."""
    quantization = meta.get("quantization")
    scales = quantization.get("activation_scales") if isinstance(quantization, dict) else None
    # per-row scales (edgefleet.model.per_row), static ones, or none: nothing depends on the batch
    invariant = meta.get("batch_invariant") is True or scales in INVARIANT_SCALES
    fp32 = "quantization" not in meta
    if config.enabled is False:
        return Decision(False, "off in runtime.yaml (batching.enabled: false)")
    if config.enabled is True:
        if not (invariant or fp32):
            log.warning("batching_forced bundle=%s: it does not declare batch_invariant, so a "
                        "text's result depends on the texts batched with it", meta.get("name"))
        return Decision(True, "on in runtime.yaml (batching.enabled: true)")
    if invariant:
        return Decision(True, f"the bundle is batch-invariant ({scales or 'batch_invariant'} activation scales)"
                        if scales in INVARIANT_SCALES else "the bundle declares batch_invariant")
    if fp32:
        return Decision(True, "FP32 bundle (batch-invariant)")
    return Decision(False, "the bundle does not declare batch_invariant (a text's result would "
                           "depend on its neighbours)")


def job_size(job) -> int:
    """Return how many texts a job adds to a batch (0: the job always runs alone)."""
    task, args = job
    return len(args[0]) if task in BATCHED_TASKS and args and isinstance(args[0], list) else 0


def group_by_length(lengths: list[int], counts: list[int] | None = None,
                    max_tokens: int | None = None) -> list[list[int]]:
    """Return indices grouped so that each group pads little: sorted by length, a new group
    starts where a length exceeds the group's shortest by more than the slack, or where the
    group's padded size (its texts x its longest) would pass max_tokens.

    counts[i] is job i's number of texts (default one each). A model call on more tokens than
    that costs more CPU a text, not less: its activations outgrow the caches (RESULTS.md)."""
    groups: list[list[int]] = []
    shortest = texts = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length, count = lengths[index], counts[index] if counts else 1
        fits = max_tokens is None or (texts + count) * length <= max_tokens
        if groups and fits and length <= shortest + max(PAD_SLACK_TOKENS, shortest * PAD_SLACK_RATIO):
            groups[-1].append(index)
            texts += count
        else:
            groups.append([index])
            shortest, texts = length, count
    return groups


def run_grouped(call, jobs: list, lengths: list[int], max_tokens: int | None = None) -> list:
    """Run jobs of one task as few model calls as padding and max_tokens allow; return one
    result or exception per job, in order.

    call(texts) runs the model on a list of texts (one row or result per text); lengths[i] is
    job i's longest text in tokens (0 for one the tokenizer refused: its group's call fails and
    each job then meets its own error). A job's texts stay together; a group whose call fails
    is run again job by job, so a bad request fails alone.
    """
    outcomes: list = [None] * len(jobs)
    texts_of = [list(args[0]) for _, args in jobs]
    for group in group_by_length(lengths, [len(texts) for texts in texts_of], max_tokens):
        texts = [text for index in group for text in texts_of[index]]
        try:
            rows = call(texts)
        except Exception as error:
            for index in group:  # a group of one has its answer; a larger one retries alone
                outcomes[index] = error if len(group) == 1 else _alone(call, texts_of[index])
            continue
        start = 0
        for index in group:
            end = start + len(texts_of[index])
            outcomes[index] = rows[start:end]
            start = end
    return outcomes


def _alone(call, texts):
    try:
        return call(texts)
    except Exception as error:
        return error
