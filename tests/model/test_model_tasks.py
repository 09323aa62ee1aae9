"""model.export / model.quantize tasks: output, and "up to date" keyed on input hashes."""

import shutil

from invoke import Config, Context

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
