"""Several inference workers: jobs really run in parallel, results equal single requests, and the
queue, abandoned jobs, thermal spacing and housekeeping keep their rules."""

import threading
import time

import numpy as np
import pytest
from edge_runtime import tuning
from edge_runtime.config import ConfigError, parse_config
from edge_runtime.service import Service
from edge_runtime.worker import BatchPolicy, InferenceWorker, QueueFull

TEXTS = ["ok", "thanks!", "the quick brown fox", "hello there world", "a b c d e",
         "the lazy dog sleeps in the sun all day long", "edge boards", "one more text here"]


def wait_for(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


def test_two_workers_run_two_jobs_at_once():
    """Each job waits for the other at a barrier: one worker would time out on the first."""
    barrier = threading.Barrier(2, timeout=3)

    def run(job):
        barrier.wait()
        return job * 10

    worker = InferenceWorker(run, depth=8, workers=2).start()
    futures = [worker.submit(n) for n in (1, 2)]
    assert [f.result(5) for f in futures] == [10, 20]
    worker.stop()


def test_queue_full_and_depth_count_every_worker():
    gate = threading.Event()
    worker = InferenceWorker(lambda job: gate.wait(5) and job, depth=1, workers=2).start()
    running = []
    for n in (1, 2):  # the queue holds one: let a worker take each before the next
        running.append(worker.submit(n))
        assert wait_for(lambda n=n: worker.busy == n)
    queued = worker.submit(3)  # both workers busy: this one waits in the queue
    with pytest.raises(QueueFull):
        worker.submit(4)
    assert worker.depth == 3
    gate.set()
    assert [f.result(5) for f in [*running, queued]] == [1, 2, 3]
    assert wait_for(lambda: worker.depth == 0)
    worker.stop()


def test_abandoned_job_is_dropped_with_several_workers():
    gate, ran = threading.Event(), []

    def run(job):
        ran.append(job)
        gate.wait(5)
        return job

    worker = InferenceWorker(run, depth=8, workers=2).start()
    busy = []
    for n in (1, 2):
        busy.append(worker.submit(n))
        assert wait_for(lambda n=n: worker.busy == n)
    dropped = worker.submit(3, wanted=lambda: False)
    kept = worker.submit(4, wanted=lambda: True)
    gate.set()
    assert kept.result(5) == 4 and [f.result(5) for f in busy] == [1, 2]
    assert dropped.cancelled() and 3 not in ran
    worker.stop()


def test_spacing_applies_after_each_job_on_each_worker():
    took = []
    worker = InferenceWorker(lambda job: time.sleep(0.01) or job, depth=16, workers=2,
                             spacing=lambda s: took.append(s) or 0.0).start()
    assert [f.result(5) for f in [worker.submit(n) for n in range(6)]] == list(range(6))
    assert wait_for(lambda: len(took) == 6)
    assert all(s >= 0.009 for s in took)
    worker.stop()


def test_thermal_spacing_holds_for_the_workers_together():
    """Above the soft limit the guard asks for a gap as long as each job (half the duty). Each
    worker resting after its own job let the other run meanwhile, so the model ran most of the
    time; the rest must hold for every worker: no job starts until it is over."""
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def run(job):
        started = time.monotonic()
        time.sleep(job)
        with lock:
            spans.append((started, time.monotonic()))
        return job

    worker = InferenceWorker(run, depth=16, workers=2, spacing=lambda took: took).start()
    futures = [worker.submit(0.02 if n % 2 else 0.06) for n in range(8)]
    [f.result(10) for f in futures]
    worker.stop()
    spans.sort()
    busy, end = 0.0, spans[0][0]
    for start, stop in spans:  # the union of the running spans
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    duty = busy / (end - spans[0][0])
    assert duty < 0.7, f"a job ran {duty:.0%} of the time under soft throttling"


def test_a_job_that_does_not_fit_a_batch_goes_to_the_next_free_worker():
    """A job that did not fit one worker's batch was held back by that worker until its batch
    ended, while the other worker was free: that request waited a whole batch for nothing."""
    gates = {"h1": threading.Event(), "h2": threading.Event()}
    done: dict = {}

    def finish(jobs, costs=None):
        time.sleep(0.5 if len(jobs) > 1 else 0.1)  # a batch of two, or one job alone
        for job in jobs:
            done[job] = time.monotonic()
        return jobs

    def run(job):
        if job in gates:
            gates[job].wait(5)
            return job
        return finish([job])[0]

    policy = BatchPolicy(size=lambda job: 0 if job in gates else 1, run_many=finish,
                         max_items=16, max_wait_s=0.0, max_cost=100)
    worker = InferenceWorker(run, depth=16, workers=2, batch=policy).start()
    held = [worker.submit(name) for name in gates]
    assert wait_for(lambda: worker.busy == 2)  # both workers hold a gated job
    futures = [worker.submit(n, cost=40) for n in (1, 2, 3)]  # 1 and 2 fit a batch of 100, 3 not
    gates["h2"].set()  # one worker takes 1 and 2; 3 does not fit its batch
    assert wait_for(lambda: worker.busy == 3)  # h1 on one worker, the batch of 1 and 2 on the other
    gates["h1"].set()  # the other worker is free now: 3 is its job, done long before the batch
    assert [f.result(5) for f in [*held, *futures]] == ["h1", "h2", 1, 2, 3]
    assert done[3] < done[1], "job 3 waited for the batch it did not fit"
    worker.stop()


def test_a_lone_clients_requests_all_run_on_the_same_worker():
    """With one request at a time the two workers took turns (the longest waiting was woken),
    so every request started on a core whose caches held the other worker's run."""
    names = []

    def run(job):
        names.append(threading.current_thread().name)
        return job

    worker = InferenceWorker(run, depth=8, workers=2).start()
    for n in range(12):
        assert worker.submit(n).result(5) == n
        time.sleep(0.005)  # the worker is waiting again before the next request
    assert len(set(names)) == 1, names
    worker.stop()


def test_housekeeping_never_runs_while_a_job_runs():
    """One worker goes quiet while the other still runs a long job: neither idle() nor
    settled() may run until both are quiet; settled() then runs once."""
    events, long_gate = [], threading.Event()

    def run(job):
        if job == "long":
            long_gate.wait(5)
        return job

    worker = InferenceWorker(run, depth=8, workers=2, settle_s=0.02,
                             idle=lambda: events.append(("idle", worker.busy)),
                             settled=lambda: events.append(("settled", worker.busy))).start()
    long = worker.submit("long")
    assert wait_for(lambda: worker.busy == 1)
    assert worker.submit("short").result(5) == "short"
    time.sleep(0.15)  # several settle periods pass on the quiet worker
    assert events == []
    long_gate.set()
    assert long.result(5) == "long"
    assert wait_for(lambda: any(name == "settled" for name, _ in events))
    time.sleep(0.1)
    assert all(busy == 0 for _, busy in events)
    assert [name for name, _ in events].count("settled") == 1
    worker.stop()


@pytest.mark.parametrize("data, message", [
    ({"workers": 0}, "key 'workers' must be in 1..1024"),
    ({"workers": "auto"}, "key 'workers' must be an integer"),
])
def test_config_refuses_a_bad_workers_count(data, message):
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert message in str(error.value)


@pytest.mark.parametrize("cpus, data, expected", [
    ((0, 1, 2, 3), {}, 2),  # the default: two model calls at once
    ((0, 1), {}, 2),
    ((0,), {}, 1),  # one thread: one worker
    ((0, 1, 2, 3), {"workers": 1}, 1),
    ((0, 1, 2, 3), {"workers": 4}, 4),
    ((0, 1, 2), {"workers": 3}, 3),  # no equal shares needed: the workers share one pool
])
def test_place_chooses_the_workers_and_never_splits_the_threads(monkeypatch, cpus, data, expected):
    monkeypatch.setattr(tuning, "apply_affinity", lambda wanted: (cpus, None))
    placement = tuning.place(parse_config(data))
    assert (placement.workers, placement.threads, placement.warnings) == (expected, len(cpus), ())


def test_place_cuts_workers_to_the_threads_and_says_so(monkeypatch):
    monkeypatch.setattr(tuning, "apply_affinity", lambda wanted: ((0, 1), None))
    placement = tuning.place(parse_config({"workers": 3}))
    assert placement.workers == 2
    assert placement.warnings == ("workers: 3 -> 2, the session's threads (more would queue on the same cores)",)


def test_service_with_two_workers_answers_as_single_requests(tiny_bundle, fake_sysfs):
    single = Service(tiny_bundle, parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 1}))
    single.start(poll=False)
    config = parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 2, "workers": 2})
    service = Service(tiny_bundle, config)
    service.start(poll=False)
    assert service.ready, service.status
    # both workers call the one session, which keeps all its threads (a lone request gets both)
    assert service.worker.workers == 2 and service.model.threads == 2
    info = service.info()
    assert info["workers"] == 2 and info["threads"] == 2
    expected = {text: single.embed([text]) for text in TEXTS}
    results: dict = {}

    def client(offset):
        for i in range(12):
            text = TEXTS[(i + offset) % len(TEXTS)]
            results.setdefault(text, []).append(service.embed([text]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert set(results) == set(TEXTS)
    for text, rows in results.items():
        for row in rows:
            np.testing.assert_array_equal(row, expected[text])
    service.worker.stop()
    single.worker.stop()


def test_the_default_service_runs_two_model_calls_at_once(tiny_bundle, fake_sysfs):
    """Two requests meet inside the model at a barrier: with one inference thread (the default
    before) the second waits in the queue behind the first, and the barrier breaks."""
    service = Service(tiny_bundle, parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 2,
                                                 "batching": {"enabled": False}}))
    service.start(poll=False)
    assert service.ready, service.status
    barrier, embed = threading.Barrier(2, timeout=3), service.model.embed

    def meet(texts):
        barrier.wait()
        return embed(texts)

    service.model.embed = meet  # type: ignore[method-assign]
    results: list = []
    clients = [threading.Thread(target=lambda t=t: results.append(service.embed([t]))) for t in TEXTS[:2]]
    for client in clients:
        client.start()
    for client in clients:
        client.join(10)
    assert len(results) == 2 and not barrier.broken
    assert service.info()["workers"] == 2
    service.worker.stop()


def test_job_queue_take_leaves_a_head_that_does_not_fit():
    from edge_runtime.jobqueue import Empty, Full, JobQueue, NoFit

    jobs = JobQueue(2)
    jobs.put_nowait("big")
    jobs.put_nowait("small")
    with pytest.raises(Full):
        jobs.put_nowait("third")
    with pytest.raises(NoFit):
        jobs.take(0, fits=lambda item: item != "big")
    assert jobs.qsize() == 2 and jobs.take(0) == "big" and jobs.take(0, fits=lambda item: True) == "small"
    started = time.monotonic()
    with pytest.raises(Empty):
        jobs.take(0.05)
    assert 0.04 < time.monotonic() - started < 1.0
    waiter = threading.Thread(target=lambda: jobs.put("late"))  # put waits for room only when full
    waiter.start()
    assert jobs.take(2) == "late"
    waiter.join(2)
