"""Sequence length policy: the bundle's max_seq_len, lowered per target by the rendered config;
no padding at batch 1, padding to the longest text in a batch; the same for every task."""

import dataclasses
import shutil
import textwrap
from pathlib import Path

import edge_runtime
import numpy as np
import pytest
from edge_runtime.config import parse_config
from edge_runtime.service import Service

REPO = Path(__file__).resolve().parents[2]
LONG = "word " * 300


def rendered_config(tmp_path, runtime: str):
    """Render runtime.yaml for one qemu-virt device with the given runtime: {...} and parse it."""
    import yaml

    from edgefleet.inventory import load_inventory
    from edgefleet.render import render_target

    shutil.copytree(REPO / "targets" / "boards", tmp_path / "boards")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(f"""
        devices:
          d1: {{board: qemu-virt, host: 127.0.0.1, runtime: {runtime}}}
    """))
    files = {f.name: f for f in render_target(load_inventory(tmp_path).target("d1"))}
    return parse_config(yaml.safe_load(files["runtime.yaml"].text), "runtime.yaml of d1")


@pytest.mark.parametrize("runtime, expected", [
    ("{max_seq_len: 16}", 16),  # the target lowers the bundle's limit
    ("{}", 64),  # not set: the bundle's (from the model's config at export)
    ("{max_seq_len: 512}", 64),  # never above what the bundle was exported for
])
def test_rendered_max_seq_len_reaches_the_service(tmp_path, tiny_bundle, fake_sysfs, runtime,
                                                  expected):
    config = rendered_config(tmp_path, runtime)
    # placement stays off this test process: only the sequence length comes from the render
    config = dataclasses.replace(config, affinity=(), threads=1, nice=None,
                                 sysfs_root=str(fake_sysfs.root))
    service = Service(tiny_bundle, config)
    service.start(poll=False)
    assert service.ready, service.status
    # goldens longer than a target's limit are truncated there: the selftest skips them
    assert ("longer than max_seq_len 16 not checked" in service.status) == (expected == 16)
    assert service.model.max_seq_len == service.info()["max_seq_len"] == expected
    service.embed([LONG])
    assert service.model.last_tokens == expected


def test_export_takes_max_seq_len_from_the_model_config(tmp_path):
    from edgefleet.model.export import default_max_seq_len
    from edgefleet.model.tiny import tiny_bert

    plain = tiny_bert(tmp_path / "a", max_positions=96, st_max_seq_len=None)
    sentence = tiny_bert(tmp_path / "b", max_positions=96, st_max_seq_len=48)
    assert (default_max_seq_len(plain), default_max_seq_len(sentence)) == (96, 48)


@pytest.mark.parametrize("task", ["embed", "classify", "qa"])
def test_no_padding_at_batch_one_and_longest_in_a_batch(tiny_bundle, task_bundles, task):
    model = edge_runtime.load(tiny_bundle if task == "embed" else task_bundles[task], threads=1)
    if task == "qa":  # one pair per call: its own length, never max_seq_len
        model.answer("what?", "a cat sat")
        assert model.last_tokens == len(model.tokenizer.encode("what?", "a cat sat").ids) < 64
        model.answer("what?", LONG)
        assert model.last_tokens == 64
        return
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    lengths = [len(model.tokenizer.encode(text).ids) for text in texts]
    one = model.tokenize_one(texts[0])
    assert one["input_ids"].shape == (1, lengths[0])
    batch = model.tokenize(texts)
    assert batch["input_ids"].shape == (3, max(lengths))
    np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), lengths)
    assert model.tokenize([LONG, "a"])["input_ids"].shape == (2, 64)
    run = model.embed if task == "embed" else model.classify
    run(texts)
    assert model.last_tokens == 3 * max(lengths)


def test_selftest_fails_when_no_golden_fits(tiny_bundle):
    from edge_runtime.selftest import selftest

    result = selftest(edge_runtime.load(tiny_bundle, threads=1, max_seq_len=4), runs=1)
    assert not result.passed and "no golden inputs of at most max_seq_len 4" in result.reason
