"""Build a tiny random BERT model directory (config, weights, tokenizer) for tests, no downloads."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

__all__ = ["tiny_bert", "tiny_vocab", "tiny_tokenizer", "tiny_bundle", "TINY_LABELS"]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an is are was be to of and in on for with that this it as at by from or not "
         "what how why when where who model edge device fleet deploy run test quick brown fox "
         "jumps over lazy dog hello world data text token bert onnx int8 board arm fast small "
         "cat sat mat good bad new old big one two three time day").split()
TINY_LABELS = ["negative", "neutral", "positive"]
HEAD_CLASSES = {"embed": "BertModel", "classify": "BertForSequenceClassification",
                "qa": "BertForQuestionAnswering"}


def tiny_vocab() -> list[str]:
    """Return a small WordPiece vocabulary: specials, characters, suffix pieces and words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    suffixes = ["##" + ch for ch in string.ascii_lowercase + string.digits]
    pieces = ["##s", "##ing", "##ed", "##er", "##ly"]
    vocab: list[str] = []
    for token in SPECIALS + chars + suffixes + pieces + WORDS:
        if token not in vocab:
            vocab.append(token)
    return vocab


def tiny_tokenizer(vocab: list[str], max_len: int = 128):
    """Return a BERT-style WordPiece tokenizer padded and truncated to a fixed max_len."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True,
                                                      handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    # Like the shipped MiniLM tokenizer: fixed padding and truncation, which export must reset.
    tokenizer.enable_padding(pad_id=ids["[PAD]"], pad_token="[PAD]", length=max_len)
    tokenizer.enable_truncation(max_length=max_len)
    return tokenizer


def tiny_bert(model_dir, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
              intermediate: int = 37, max_positions: int = 128, st_max_seq_len: int | None = 64,
              task: str = "embed") -> Path:
    """Write a random BERT (plain, or with a classification or QA head) with a tiny vocab.

    st_max_seq_len writes a sentence-transformers config (embedding models have one).
    """
    import torch
    import transformers
    from transformers import BertConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions, pad_token_id=0)
    if task == "classify":
        config.id2label = dict(enumerate(TINY_LABELS))
        config.label2id = {label: i for i, label in enumerate(TINY_LABELS)}
    torch.manual_seed(seed)
    model = getattr(transformers, HEAD_CLASSES[task])(config)
    with torch.no_grad():  # widen the weights a little so outputs are not near-constant
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(str(model_dir))
    tiny_tokenizer(vocab).save(str(model_dir / "tokenizer.json"))
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if st_max_seq_len:
        (model_dir / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": st_max_seq_len, "do_lower_case": False}) + "\n")
    return model_dir


def tiny_bundle(root, seed: int = 0, task: str = "embed", **export_args) -> dict[str, Path]:
    """Build model dir, FP32 export and INT8 bundle for a tiny BERT under root; return paths.

    Task heads get max_seq_len 64 like the embedding model's sentence-transformers limit.
    """
    from edgefleet.model.export import export
    from edgefleet.model.quantize import quantize

    root = Path(root)
    model_dir = tiny_bert(root / "hf", seed=seed, task=task,
                          st_max_seq_len=64 if task == "embed" else None)
    task_args: dict[str, Any] = {"max_seq_len": 64} if task != "embed" else {}
    export(model_dir, root / "fp32", **task_args, **export_args)
    name = "tiny-bert-int8" if task == "embed" else f"tiny-bert-{task}-int8"
    quantize(root / "fp32", root / "bundle", name=name)
    return {"model_dir": model_dir, "fp32_dir": root / "fp32", "bundle_dir": root / "bundle"}
