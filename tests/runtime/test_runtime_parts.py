"""Tuning (affinity, nice), the inference worker, metrics text and request validation."""

import os
import threading
import time

import pytest
from edge_runtime import tuning
from edge_runtime.config import LimitsConfig, parse_config
from edge_runtime.metrics import Histogram, Metrics, sample
from edge_runtime.validate import ApiError, check_length, check_token, parse_texts
from edge_runtime.worker import InferenceWorker, QueueFull


@pytest.fixture
def restore_affinity():
    before = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.parametrize("wanted, applied, warns", [
    ([0], (0,), False),
    ([0, 4096 - 1], (0,), True),          # a CPU this 2-core machine does not have
    ([], None, False),                    # [] leaves the affinity as it is
])
def test_apply_affinity(restore_affinity, wanted, applied, warns):
    before = tuple(sorted(os.sched_getaffinity(0)))
    got, warning = tuning.apply_affinity(wanted)
    assert got == (applied or before)
    assert tuple(sorted(os.sched_getaffinity(0))) == got
    assert (warning is not None) == warns
    if warns:
        assert "do not exist" in warning


def test_place_pins_and_sizes_threads(restore_affinity, caplog):
    config = parse_config({"affinity": [0, 63], "threads": 2})
    placement = tuning.place(config)
    assert placement.affinity == (0,) and placement.threads == 1
    assert len(placement.warnings) == 2  # missing CPU, threads shrunk
    assert os.sched_getaffinity(0) == {0}


def test_place_with_none_of_the_boards_cores_keeps_the_cpus_and_sizes_threads(restore_affinity):
    """A board's big cores 4-7 (rk3588) on a host without them: stay unpinned, one thread per CPU allowed."""
    before = os.sched_getaffinity(0)
    missing = [4096 - 4, 4096 - 3, 4096 - 2, 4096 - 1]
    placement = tuning.place(parse_config({"affinity": missing, "threads": len(missing)}))
    assert set(placement.affinity) == before == os.sched_getaffinity(0)
    assert placement.threads == min(len(missing), len(before))
    assert "do not exist" in placement.warnings[0]
    assert len(placement.warnings) == (2 if len(before) < len(missing) else 1)


def test_nice_not_permitted_warns_once_and_carries_on(monkeypatch, caplog):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tuning.os, "setpriority", refuse)
    placement = tuning.place(parse_config({"nice": -5}))
    assert placement.nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert [r.getMessage() for r in caplog.records if "nice" in r.getMessage()
            and r.levelname == "WARNING"] == [
        f"tuning nice: not permitted to set -5 (needs CAP_SYS_NICE); carrying on at "
        f"{placement.nice}"]


def test_worker_runs_in_order_and_refuses_when_full():
    gate, seen = threading.Event(), []

    def run(job):
        gate.wait(5)
        seen.append(job)
        if job == "boom":
            raise RuntimeError("boom")
        return job.upper()

    worker = InferenceWorker(run, depth=1).start()
    first = worker.submit("a")
    while not worker.busy:
        pass
    second = worker.submit("boom")
    with pytest.raises(QueueFull):
        worker.submit("c")
    assert worker.depth == 2
    gate.set()
    assert first.result(5) == "A"
    with pytest.raises(RuntimeError):
        second.result(5)
    assert worker.submit("d").result(5) == "D"  # the worker survived the failing job
    assert seen == ["a", "boom", "d"]
    worker.stop()


def test_worker_idle_hook_runs_when_queue_empty_and_survives_errors():
    calls = []

    def idle():
        calls.append("idle")
        if len(calls) == 1:
            raise RuntimeError("housekeeping failed")

    worker = InferenceWorker(lambda job: job * 2, depth=4, idle=idle).start()
    assert worker.submit(1).result(5) == 2
    assert worker.submit(2).result(5) == 4  # the worker outlived the failing idle()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert calls == ["idle", "idle"]
    worker.stop()


def test_worker_settled_hook_runs_once_after_a_quiet_spell_only():
    settled = threading.Event()
    count = []

    def on_settled():
        count.append(time.monotonic())
        settled.set()

    worker = InferenceWorker(lambda job: job, depth=4, settled=on_settled, settle_s=0.2).start()
    time.sleep(0.4)
    assert not count  # nothing ran yet: nothing to settle
    started = time.monotonic()
    for job in range(5):  # a burst with gaps shorter than settle_s
        assert worker.submit(job).result(5) == job
        time.sleep(0.05)
    assert settled.wait(5)
    assert count[0] - started >= 0.2 + 0.05 * 4
    time.sleep(0.5)
    assert len(count) == 1  # once per quiet spell, not on every timeout
    worker.stop()


def test_service_trims_memory_only_after_long_inputs(tiny_bundle, fake_sysfs, monkeypatch):
    from edge_runtime import service as service_module
    from edge_runtime.config import parse_config

    trims = []
    monkeypatch.setattr(service_module, "_malloc_trim", lambda: trims.append(1))
    service = service_module.Service(tiny_bundle, parse_config(
        {"sysfs_root": str(fake_sysfs.root), "threads": 1}))
    service.start(poll=False)
    assert service.ready
    trims.clear()
    service._run(("embed", (["short"],)))
    service._idle()
    assert trims == [] and service.model.last_tokens < service_module.TRIM_TOKENS
    service._run(("embed", (["word " * 400] * 4,)))  # batch x max_seq_len over the threshold
    assert service.model.last_tokens > service_module.TRIM_TOKENS
    service._idle()
    service._idle()
    assert trims == [1]


def test_histogram_and_metrics_text():
    histogram = Histogram(buckets=(0.01, 0.1))
    for seconds in (0.005, 0.05, 0.5):
        histogram.observe(seconds)
    assert histogram.lines("x", {"route": "/a"}) == [
        'x_bucket{route="/a",le="0.01"} 1', 'x_bucket{route="/a",le="0.1"} 2',
        'x_bucket{route="/a",le="+Inf"} 3', 'x_sum{route="/a"} 0.555', 'x_count{route="/a"} 3']
    metrics = Metrics()
    metrics.request("POST", "/v1/embed", 200, 0.02)
    text = metrics.render([("g", "a gauge", [({"zone": 'we"ird'}, 1.5)])])
    assert 'edge_requests_total{method="POST",route="/v1/embed",status="200"} 1' in text
    assert 'g{zone="we\\"ird"} 1.5' in text and text.endswith("\n")
    assert sample("n", None, 3) == "n 3"


LIMITS = LimitsConfig(max_body_bytes=100, max_texts=2, max_text_chars=5)


@pytest.mark.parametrize("body, status, message", [
    (b'{"texts": ["ok"]}', None, None),
    (b"{not json", 400, "not valid JSON"),
    (b'{"texts": ["\xff"]}', 400, "not valid UTF-8"),
    (b'["x"]', 400, "expected"),
    (b'{"texts": "x"}', 400, "expected"),
    (b'{"texts": [1]}', 400, "expected"),
    (b'{"texts": []}', 400, "got 0"),
    (b'{"texts": ["a", "b", "c"]}', 413, "1..2 strings, got 3"),
    (b'{"texts": ["abcdef"]}', 413, "longer than 5"),
    (b'{"texts": ["\\ud800"]}', 400, "unpaired surrogate"),
    (b"[" * 100000, 400, "not valid JSON"),
])
def test_parse_texts(body, status, message):
    if status is None:
        assert parse_texts(body, LIMITS) == ["ok"]
        return
    with pytest.raises(ApiError, match=message) as error:
        parse_texts(body, LIMITS)
    assert error.value.status == status


@pytest.mark.parametrize("header, status", [(None, 411), ("abc", 411), ("-1", 411), ("101", 413)])
def test_check_length(header, status):
    with pytest.raises(ApiError) as error:
        check_length(header, 100)
    assert error.value.status == status


@pytest.mark.parametrize("header, token, ok", [
    (None, None, True), ("Bearer s3cret", "s3cret", True), ("bearer s3cret", "s3cret", True),
    (None, "s3cret", False), ("Bearer nope", "s3cret", False), ("Basic s3cret", "s3cret", False),
])
def test_check_token(header, token, ok):
    if ok:
        check_token(header, token)
    else:
        with pytest.raises(ApiError) as error:
            check_token(header, token)
        assert error.value.status == 401 and "WWW-Authenticate" in error.value.headers


def test_concurrent_batches_leave_the_trim_to_the_quiet_spell(tiny_bundle, fake_sysfs, monkeypatch):
    """Between the batches of concurrent clients the queue is empty for a moment after every
    batch; trimming there hands back memory the next batch faults straight back in."""
    from edge_runtime import service as service_module
    from edge_runtime.config import parse_config

    trims = []
    monkeypatch.setattr(service_module, "_malloc_trim", lambda: trims.append(1))
    service = service_module.Service(tiny_bundle, parse_config(
        {"sysfs_root": str(fake_sysfs.root), "threads": 1, "batching": {"enabled": True}}))
    service.start(poll=False)
    assert service.ready
    trims.clear()
    jobs = [("embed", (["word " * 40] * 4,)) for _ in range(4)]  # each over batching.max_tokens
    service.worker.batches = [len(jobs)]  # as the worker records a batch of concurrent jobs
    service._run_many(jobs)
    assert service.model.last_tokens > service_module.TRIM_TOKENS
    service._idle()
    assert trims == []  # not between two batches
    service.worker.settled()  # no job for settle_s: now
    assert trims == [1]
    service._run(("embed", (["word " * 400] * 4,)))  # a lone client's long call: trimmed when idle
    service.worker.batches = [1] * 8
    service._idle()
    assert trims == [1, 1]


FAULTS_PROBE = """
import resource, numpy as np
from edge_runtime.service import single_malloc_arena
if not single_malloc_arena():
    raise SystemExit("not glibc")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def call():  # a batched call: several 4 MiB tensors alive at once, all freed at its end
    return [np.ones(1 << 20, dtype=np.float32) for _ in range(6)]
for _ in range(3):  # the heap grows once
    call()
before = faults()
for _ in range(20):
    call()
print(faults() - before)
"""


def test_large_tensors_do_not_fault_their_pages_in_on_every_call():
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    payload = os.path.dirname(os.path.dirname(tuning.__file__))
    out = subprocess.run([sys.executable, "-c", FAULTS_PROBE], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": payload})
    if "not glibc" in out.stderr:
        pytest.skip("glibc only")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 20 * 6 * 1024 // 10, out.stdout  # faulted in again: 6 * 1024 a call
