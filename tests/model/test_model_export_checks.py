"""Export refuses a task head the checkpoint lacks and names a model after its directory."""

import json
import shutil

import pytest

from edgefleet.model.export import export


def test_export_refuses_a_head_that_would_be_random(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"qa_outputs\.weight") as caught:
        export(tiny["model_dir"], tmp_path / "out", task="qa")
    assert "randomly initialised" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_fine_tune_is_named_after_its_directory_not_its_base(tiny, tmp_path):
    model_dir = tmp_path / "my-finetune"
    shutil.copytree(tiny["model_dir"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config,
                                                       "_name_or_path": "bert-base-uncased"}))
    result = export(model_dir, tmp_path / "out")
    assert result.source["name"] == "my-finetune"
    named = export(model_dir, tmp_path / "named", name="support-tickets-v2")
    assert named.source["name"] == "support-tickets-v2"


def test_quantize_prints_no_ort_warnings(tiny, tmp_path, caplog):
    import logging

    from edgefleet.model.graph import quantize_graph

    with caplog.at_level(logging.WARNING):
        quantize_graph(tiny["fp32_dir"] / "model.onnx", tmp_path / "int8.onnx")
    assert not [r for r in caplog.records if r.name == "root"], caplog.text[:300]
