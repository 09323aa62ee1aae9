"""The runtime CLI classifies and answers as well as it embeds (python -m edge_runtime)."""

import json

from edge_runtime.__main__ import main


def test_classify_prints_one_result_per_text(tiny_classify, capsys):
    code = main(["classify", "--bundle", str(tiny_classify["bundle_dir"]), "--threads", "1",
                 "--json", "hello world", "a cat sat on the mat"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and len(results) == 2
    assert all(abs(sum(r["scores"].values()) - 1.0) < 1e-4 and r["label"] in r["scores"]
               for r in results)


def test_classify_reads_stdin_lines_in_plain_text(tiny_classify, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hello world\nbad old cat\n"))
    assert main(["classify", "--bundle", str(tiny_classify["bundle_dir"]), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 3 for line in lines)


def test_answer_prints_a_span_of_the_context(tiny_qa, capsys):
    context = "the quick brown fox jumps over the lazy dog"
    code = main(["answer", "--bundle", str(tiny_qa["bundle_dir"]), "--threads", "1", "--json",
                 "--question", "what jumps?", "--context", context])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] == context[out["start"]:out["end"]]


def test_a_command_for_another_task_exits_2_naming_the_task(tiny_qa, caplog):
    assert main(["classify", "--bundle", str(tiny_qa["bundle_dir"]), "x"]) == 2
    assert "'qa' bundle, not 'classify'" in caplog.text
