"""model.export / model.quantize tasks: output, and "up to date" keyed on input hashes."""

import shutil

import pytest
from invoke import Config, Context, Exit

from edgefleet.tasks import model as tasks


def test_tasks_write_then_say_up_to_date(tiny, tmp_path, capsys):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    model_dir = shutil.copytree(tiny["model_dir"], tmp_path / "hf")
    fp32, bundle = tmp_path / "fp32", tmp_path / "bundle"

    tasks.export(c, model_dir=str(model_dir), out=str(fp32))
    tasks.quantize(c, model=str(fp32), out=str(bundle), name="tiny-int8")
    first = capsys.readouterr().out
    assert "exported" in first and '"Attention": 2' in first and "quantized" in first

    tasks.export(c, model_dir=str(model_dir), out=str(fp32))
    tasks.quantize(c, model=str(fp32), out=str(bundle), name="tiny-int8")
    second = capsys.readouterr().out
    assert second.count("up to date") == 2 and "% of FP32" in second

    (model_dir / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    tasks.export(c, model_dir=str(model_dir), out=str(fp32))
    tasks.quantize(c, model=str(fp32), out=str(bundle), name="tiny-int8")
    third = capsys.readouterr().out
    assert "up to date" not in third and "max_seq_len 32" in third


def test_default_out_dirs_under_build_dir(tiny, tmp_path, capsys):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "b")}}))
    tasks.export(c, model_dir=str(tiny["model_dir"]))
    tasks.quantize(c, model=str(tmp_path / "b" / "models" / "hf"))
    assert (tmp_path / "b" / "bundles" / "hf-int8" / "bundle.json").is_file()
    assert "hf-int8" in capsys.readouterr().out


def test_profile_task_writes_table_and_png(tiny_qa, tmp_path, capsys):
    import json

    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    tasks.profile(c, bundle=str(tiny_qa["bundle_dir"]), runs=1, top=6)
    out = capsys.readouterr().out
    png = tmp_path / "build" / "reports" / "profile-tiny-bert-qa-int8.png"
    assert "(qa)" in out and "MatMulIntegerToFloat" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    tasks.profile(c, bundle=str(tiny_qa["bundle_dir"]), runs=1, top=3, json=True,
                  png=str(tmp_path / "p.png"))
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["nodes"]) == 3 and doc["png"] == str(tmp_path / "p.png")


@pytest.mark.parametrize("text, expected", [
    ("nope", "not valid JSON"),
    ('{"rows": []}', "'nodes' list"),
    ('{"nodes": [{"node": "a", "op": "MatMul"}]}', "nodes[0] lacks calls, total_us"),
])
def test_parse_profile_errors(text, expected):
    from edgefleet.model.charts import parse_profile

    with pytest.raises(ValueError, match=expected.replace("[", r"\[")):
        parse_profile(text, "device lab-01")


def test_export_task_records_task_and_rejects_unknown(tiny_classify, tmp_path, capsys):
    c = Context(Config(overrides={"edgefleet": {"build_dir": str(tmp_path / "build")}}))
    tasks.export(c, model_dir=str(tiny_classify["model_dir"]), out=str(tmp_path / "fp32"),
                 max_seq_len=32)
    assert "task classify; labels ['negative', 'neutral', 'positive']; max_seq_len 32" in \
        capsys.readouterr().out
    with pytest.raises(Exit, match="--task summarize: expected one of embed, classify, qa") as refused:
        tasks.export(c, model_dir=str(tiny_classify["model_dir"]), task="summarize")
    assert refused.value.code == 2
