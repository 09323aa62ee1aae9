"""The edge_runtime command line: embed --json, selftest exit codes, config handling."""

import json
import shutil

import edge_runtime
import numpy as np
import pytest


def test_embed_json_reads_stdin_lines(tiny_bundle, run_cli):
    texts = ["hello world", "the cat sat on the mat", "", "🚀 rocket"]
    proc = run_cli("embed", "--json", "--bundle", tiny_bundle, stdin="\n".join(texts) + "\n")
    assert proc.returncode == 0, proc.stderr
    embeddings = np.array(json.loads(proc.stdout)["embeddings"], dtype=np.float32)
    model = edge_runtime.load(tiny_bundle)
    assert embeddings.shape == (len(texts), model.dim)
    np.testing.assert_allclose(embeddings, model.embed(texts), atol=1e-6)


def test_embed_takes_bundle_from_config(tiny_bundle, run_cli, tmp_path):
    (tmp_path / "runtime.yaml").write_text(f"bundle: {tiny_bundle}\nthreads: 1\n")
    proc = run_cli("embed", "--config", tmp_path / "runtime.yaml", "one text")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == edge_runtime.load(tiny_bundle).dim


def test_batch_one_buffers_match_the_batch_path(tiny_bundle):
    model = edge_runtime.load(tiny_bundle, threads=1)
    for text in ["short", "a somewhat longer text to embed " * 3, "", "short"]:
        fresh = model.infer(model.tokenize([text]))
        reused = model.infer(model.tokenize_one(text))
        np.testing.assert_array_equal(fresh, reused)
    assert model.threads == 1


def test_selftest_passes(tiny_bundle, run_cli):
    proc = run_cli("selftest", "--bundle", tiny_bundle, "--runs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    assert all(word in proc.stdout for word in ("p50=", "p95=", "p99=", "rss_mib "))


def test_selftest_fails_on_tampered_golden(tiny_bundle, run_cli, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["golden"]["embeddings"][2] = [-v for v in meta["golden"]["embeddings"][2]]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    proc = run_cli("selftest", "--bundle", bundle, "--runs", "1")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "index [2]" in proc.stdout


def test_missing_bundle_is_a_clear_error(run_cli, tmp_path):
    proc = run_cli("selftest", "--bundle", tmp_path)
    assert proc.returncode == 2
    assert "bundle.json: not found" in proc.stderr
    proc = run_cli("embed", "x")
    assert proc.returncode == 2 and "no bundle" in proc.stderr


def test_profile_prints_lengths(tiny_bundle, run_cli):
    proc = run_cli("profile", "--bundle", tiny_bundle, "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "load_seconds" in proc.stdout and "tokens" in proc.stdout
    assert "top " in proc.stdout and "nodes by time" in proc.stdout
    table = proc.stdout.split("nodes by time", 1)[1].splitlines()[1:]
    assert table[0].split()[:3] == ["node", "op", "calls"] and len(table) > 3


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_selftest_and_profile_json_for_task_bundles(task_bundles, run_cli, task):
    proc = run_cli("selftest", "--bundle", task_bundles[task], "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "abs_diff[0] = " in proc.stdout and "latency_ms p50=" in proc.stdout
    assert "p99=" in proc.stdout and "rss_mib " in proc.stdout and "PASS" in proc.stdout
    proc = run_cli("profile", "--bundle", task_bundles[task], "--runs", "1", "--top", "5",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["task"] == task and len(doc["nodes"]) == 5 and doc["inputs"] >= 4
    assert doc["nodes"][0]["total_us"] >= doc["nodes"][-1]["total_us"] > 0
    assert [row["tokens"] for row in doc["latency_by_length"]][-1] == 64
    proc = run_cli("embed", "--bundle", task_bundles[task], "x")
    assert proc.returncode == 2 and f"is a '{task}' bundle, not 'embed'" in proc.stderr
