"""Micro-batching: batched results equal single ones, the wait is bounded, a bad job fails alone,
and batching is on only for a bundle whose results do not depend on their neighbours."""

import json
import shutil
import threading
import time

import numpy as np
import pytest
from edge_runtime.batching import Decision, decide, group_by_length, job_size
from edge_runtime.config import BatchingConfig, ConfigError, parse_config
from edge_runtime.service import Service
from edge_runtime.worker import BatchPolicy, InferenceWorker

TEXTS = ["ok", "thanks!", "the quick brown fox", "hello there world", "a b c d e",
         "the lazy dog sleeps in the sun all day long", "edge boards", "one more text here"]


@pytest.fixture(scope="session")
def fp32_bundle(tiny_bundle, tmp_path_factory):
    """Return a bundle of the tiny model's FP32 graph (no quantization: batch-invariant)."""
    bundle = tmp_path_factory.mktemp("tiny-fp32") / "bundle"
    bundle.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        shutil.copy(tiny_bundle.parent / "fp32" / name, bundle / name)
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    meta.pop("quantization")
    meta.pop("session_config", None)
    meta["name"] = "tiny-bert-fp32"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    return bundle


def started(bundle, fake_sysfs, **overrides) -> Service:
    config = parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 1, **overrides})
    service = Service(bundle, config)
    service.start(poll=False)
    assert service.ready, service.status
    return service


def hold_worker(service: Service) -> threading.Event:
    """Keep the worker busy on a first job until the returned event is set."""
    gate, real_run = threading.Event(), service.worker.run

    def run(job):
        if job[1][0] == ["hold"]:
            gate.wait(10)
        return real_run(job)

    service.worker.run = run
    service.worker.submit(("embed", (["hold"],)))
    deadline = time.monotonic() + 5
    while not service.worker.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    return gate


def concurrently(calls) -> list:
    """Run the calls on threads at once; return their results (or exceptions) in order."""
    results: list = [None] * len(calls)

    def one(index, call):
        try:
            results[index] = call()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=one, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def wait_for_depth(service: Service, depth: int) -> None:
    deadline = time.monotonic() + 5
    while service.worker.depth < depth and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.worker.depth >= depth


def test_concurrent_requests_are_batched_and_equal_single_ones_fp32(fp32_bundle, fake_sysfs):
    service = started(fp32_bundle, fake_sysfs)
    assert service.info()["batching"]["enabled"] is True
    single = [service.embed([text])[0] for text in TEXTS]
    gate = hold_worker(service)
    calls = [lambda text=text: service.embed([text]) for text in TEXTS]
    calls.append(lambda: service.embed(TEXTS[:3]))  # a request of several texts joins too
    runner = threading.Thread(target=lambda: results.extend(concurrently(calls)))
    results: list = []
    runner.start()
    wait_for_depth(service, len(calls) + 1)
    gate.set()
    runner.join(30)
    assert max(service.worker.batches) > 1  # they ran in batches, not one by one
    for text, expected, got in zip(TEXTS, single, results, strict=False):
        np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6, err_msg=text)
    np.testing.assert_allclose(results[-1], np.stack(single[:3]), rtol=0, atol=1e-6)
    service.worker.stop()


def test_a_batch_of_long_texts_runs_as_model_calls_of_at_most_max_tokens(fp32_bundle, fake_sysfs):
    """16 concurrent 66-token texts took one call of 16 x 66 tokens, which costs more CPU a text
    than calls of 4 (RESULTS.md): the batch is split by batching.max_tokens, answers unchanged."""
    service = started(fp32_bundle, fake_sysfs, batching={"max_tokens": 64})
    assert service.info()["batching"]["max_tokens"] == 64
    texts = [" ".join(["the lazy dog"] * 3) + f" {n}" + " x" * (n % 3) for n in range(8)]  # 12-14 tokens
    single = [service.embed([text])[0] for text in texts]
    calls_seen: list = []
    embed = service.model.embed

    def counted(batch):
        calls_seen.append(len(batch) * max(service.model.token_lengths(batch)))
        return embed(batch)

    service.model.embed = counted  # type: ignore[method-assign]
    before = len(service.worker.batches)
    gate = hold_worker(service)
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(
        concurrently([lambda text=text: service.embed([text]) for text in texts])))
    runner.start()
    wait_for_depth(service, len(texts) + 1)
    gate.set()
    runner.join(30)
    # the worker took at most ~64 tokens of the queue a batch (4-5 texts of 12-14), and each
    # model call held at most 64 padded tokens; before, all eight ran as one call of 8 x 14
    batches = service.worker.batches[before + 1:]  # after the held job
    assert 1 < max(batches) < len(texts) and sum(batches) == len(texts), batches
    assert max(calls_seen[1:]) <= 64, calls_seen
    for text, expected, got in zip(texts, single, results, strict=True):
        np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6, err_msg=text)
    service.worker.stop()


def test_a_worker_takes_no_more_than_max_cost_and_leaves_the_rest(fake_sysfs):
    calls: list = []

    def run_many(jobs, costs):
        calls.append(list(jobs))
        return jobs

    policy = BatchPolicy(size=lambda job: 1, run_many=run_many, max_items=16, max_wait_s=0.0,
                         max_cost=100)
    worker = InferenceWorker(lambda job: job, depth=16, batch=policy)
    futures = [worker.submit(n, cost=40) for n in range(5)]  # 200 tokens queued
    worker.start()
    assert [f.result(5) for f in futures] == list(range(5))
    assert calls == [[0, 1], [2, 3]]  # 80 and 80 tokens; the last 40 ran alone (run, not run_many)
    worker.stop()


def test_a_malformed_job_in_a_batch_fails_alone(fp32_bundle, fake_sysfs):
    service = started(fp32_bundle, fake_sysfs)
    gate = hold_worker(service)
    calls = [lambda: service.embed(["fine one"]), lambda: service.embed([None]),  # type: ignore
             lambda: service.embed(["fine two", "and three"])]
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(concurrently(calls)))
    runner.start()
    wait_for_depth(service, len(calls) + 1)
    gate.set()
    runner.join(30)
    assert max(service.worker.batches) == 3  # the three ran as one batch
    assert results[0].shape == (1, service.model.dim)
    assert isinstance(results[1], Exception)
    assert results[2].shape == (2, service.model.dim)
    service.worker.stop()


def test_int8_bundle_with_per_row_scales_is_batched(tiny_bundle, fake_sysfs):
    """The quantizer's INT8 scales each row on its own: batching it by default is safe (#20)."""
    import json

    assert json.loads((tiny_bundle / "bundle.json").read_text())["quantization"]["activation_scales"] == "per-row"
    service = started(tiny_bundle, fake_sysfs)
    info = service.info()["batching"]
    assert info["enabled"] is True and "per-row" in info["reason"]
    service.worker.stop()


def fake_policy(max_items=16, max_wait_s=0.05, calls=None):
    def run_many(jobs, costs):
        if calls is not None:
            calls.append(list(jobs))
        return [job * 10 for job in jobs]

    return BatchPolicy(size=lambda job: 1, run_many=run_many, max_items=max_items,
                       max_wait_s=max_wait_s)


def test_a_lone_client_never_waits_and_the_wait_is_bounded():
    calls: list = []
    worker = InferenceWorker(lambda job: job * 10, depth=32,
                             batch=fake_policy(max_wait_s=0.2, calls=calls)).start()
    started_at = time.perf_counter()
    for n in range(5):  # one client, one request after another: batches of one, no wait
        assert worker.submit(n).result(5) == n * 10
    assert time.perf_counter() - started_at < 0.2
    assert worker.batches == [1] * 5
    worker.batches.append(4)  # as after a batch of 4 concurrent jobs: now it waits for more
    started_at = time.perf_counter()
    assert worker.submit(7).result(5) == 70
    took = time.perf_counter() - started_at
    assert 0.15 < took < 0.6  # waited for company, but no longer than max_wait_s
    worker.stop()


def test_batch_size_is_bounded_and_a_stop_is_honoured():
    calls: list = []
    gate = threading.Event()
    worker = InferenceWorker(lambda job: gate.wait(5) and job * 10, depth=64,
                             batch=fake_policy(max_items=4, max_wait_s=0.0, calls=calls))
    first = worker.submit(0)
    rest = [worker.submit(n) for n in range(1, 10)]
    worker.start()
    gate.set()
    assert first.result(5) == 0 and [f.result(5) for f in rest] == [n * 10 for n in range(1, 10)]
    assert all(len(batch) <= 4 for batch in calls) and max(worker.batches) == 4
    worker.stop()


@pytest.mark.parametrize(("enabled", "meta", "expected"), [
    ("auto", {"quantization": {"method": "dynamic"}}, False),
    ("auto", {"quantization": {"method": "dynamic"}, "batch_invariant": True}, True),
    ("auto", {"quantization": {"method": "dynamic"}, "batch_invariant": "yes"}, False),
    ("auto", {}, True),  # FP32
    (False, {}, False),
    (True, {"quantization": {"method": "dynamic"}}, True),
    # what edgefleet.model.quantize writes: per-row scales batch by default, per-tensor ones never
    ("auto", {"quantization": {"method": "dynamic", "activation_scales": "per-row"}}, True),
    ("auto", {"quantization": {"method": "dynamic", "activation_scales": "per-tensor"}}, False),
    ("auto", {"quantization": {"method": "dynamic", "activation_scales": "mixed"}}, False),
    ("auto", {"quantization": "per-row"}, False),
])
def test_decision(enabled, meta, expected):
    decision = decide(BatchingConfig(enabled=enabled), {"name": "b", **meta})
    assert isinstance(decision, Decision) and decision.enabled is expected, decision.reason


@pytest.mark.parametrize(("lengths", "groups"), [
    ([10, 11, 12, 13], [[0, 1, 2, 3]]),
    ([10, 40, 12, 44], [[0, 2], [1, 3]]),
    ([64, 16, 80], [[1], [0, 2]]),  # 80 <= 64 + 16
    ([5], [[0]]),
])
def test_group_by_length(lengths, groups):
    assert group_by_length(lengths) == groups


@pytest.mark.parametrize(("lengths", "counts", "groups"), [
    ([54] * 6, None, [[0, 1, 2, 3], [4, 5]]),  # 4 x 54 = 216 <= 256 < 5 x 54
    ([15] * 18, None, [list(range(17)), [17]]),  # 17 x 15 = 255
    ([50, 52, 300, 51], None, [[0, 3, 1], [2]]),  # a text over the budget runs alone
    ([40, 40, 40], [3, 4, 1], [[0], [1, 2]]),  # texts of several-text jobs count: 3 + 4 > 6
])
def test_group_by_length_keeps_each_call_within_max_tokens(lengths, counts, groups):
    assert group_by_length(lengths, counts, max_tokens=256) == groups


@pytest.mark.parametrize(("job", "size"), [
    (("embed", (["a", "b"],)), 2), (("classify", (["a"],)), 1), (("qa", ("q", "c")), 0)])
def test_job_size(job, size):
    assert job_size(job) == size


@pytest.mark.parametrize(("batching", "words"), [
    ({"enabled": "yes"}, "'batching.enabled' must be auto, true or false"),
    ({"max_batch": 0}, "'batching.max_batch' must be in 1..256"),
    ({"max_wait_ms": 500}, "'batching.max_wait_ms' must be in 0.0..100.0"),
])
def test_batching_config_errors_name_the_key(batching, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        parse_config({"batching": batching})
