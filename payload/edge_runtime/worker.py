"""Inference threads (one by default) fed by one bounded queue; a full queue refuses work at once.

With several workers each thread takes its own jobs from the one queue; a job that does not fit
a worker's batch stays at the head for the next worker that is free. They run the same ONNX
Runtime session (its run is thread-safe) and share its intra-op pool, so one worker's model call
runs while another tokenizes, pools or gathers its next batch, and a lone request still gets
every pool thread. idle() and settled() run only when no worker
runs a job, and no job starts while they run.

With a batch policy the thread takes several queued jobs at once (micro-batching): it drains
what already waits and, only when one of the recent batches held more than one job (clients are
concurrent), waits up to max_wait_s for as many jobs as the largest of them. Waiting on the
recent largest, not the last, keeps a late client from splitting the next batch in two. A lone
client never waits (after a burst, for RECENT of its requests at most).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from edge_runtime.jobqueue import Empty, Full, JobQueue, NoFit

__all__ = ["InferenceWorker", "QueueFull", "Abandoned", "BatchPolicy"]

log = logging.getLogger("edge_runtime")
RECENT = 8  # batches the expected company is taken from


class QueueFull(Exception):
    """The queue holds queue_depth jobs already."""


class Abandoned(ConnectionError):
    """The client went away before the worker reached its job; the job was dropped."""


@dataclass(frozen=True)
class BatchPolicy:
    """How the worker batches: size(job) is a job's text count (0: never batched), at most
    max_items texts and about max_cost of the jobs' cost (submit's `cost`: tokens) a batch,
    run_many(jobs, costs) returns one result or exception per job."""

    size: Callable[[object], int]
    run_many: Callable[[list, list], list]
    max_items: int = 16
    max_wait_s: float = 0.004
    max_cost: int | None = None


class _Lane:
    """One worker thread's own state: how many jobs it runs now."""

    def __init__(self):
        self.busy = 0


class InferenceWorker:
    """Run run(job) for queued jobs on `workers` threads; spacing() returns the idle time after each.

    observe(seconds) is called with each job's run time (for metrics); spacing(seconds) lets the
    thermal guard stretch the gap between jobs; idle() runs after a job when no other waits
    (housekeeping nobody has to wait for); settled() runs once when no job came for settle_s
    seconds after the last one (housekeeping that should not land between two requests).
    """

    def __init__(self, run, depth: int, observe=lambda s: None, spacing=lambda s: 0.0,
                 idle=lambda: None, settled=lambda: None, settle_s: float = 1.0,
                 batch: BatchPolicy | None = None, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.run, self.observe, self.spacing, self.idle = run, observe, spacing, idle
        self.settled, self.settle_s = settled, settle_s
        self.batch = batch  # None: one job at a time; set before start()
        self.jobs = JobQueue(depth)
        self.batches: list[int] = []  # jobs per batch run, the latest 64 (tests, metrics)
        self.lanes = [_Lane() for _ in range(workers)]
        # held while a lane's busy count changes and while idle()/settled() run: housekeeping
        # (malloc_trim) never overlaps a run, and runs wait for it to finish
        self._quiet = threading.Lock()
        self._unsettled = False  # a job ran since settled() last ran
        # While the thermal guard asks for a gap after each job (spacing), the workers take turns
        # (one job at a time, _turns) and the gap is one rest for all of them: a rest per worker
        # let the other run meanwhile and kept the model running most of the time.
        self._turns = threading.Lock()
        self._spaced = False
        self._rest_until = 0.0
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name="inference" if workers == 1 else f"inference-{i}")
                         for i, lane in enumerate(self.lanes)]

    @property
    def workers(self) -> int:
        """Return the number of inference threads."""
        return len(self.lanes)

    @property
    def busy(self) -> int:
        """Return the number of jobs running now, over all workers."""
        return sum(lane.busy for lane in self.lanes)

    @property
    def depth(self) -> int:
        """Return the number of jobs waiting or running."""
        return self.jobs.qsize() + self.busy

    @property
    def concurrent(self) -> bool:
        """Return True while clients are concurrent: one of the recent batches held several jobs."""
        return max(self.batches[-RECENT:], default=1) > 1

    def start(self) -> InferenceWorker:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, job, wanted=None, cost: int = 0) -> Future:
        """Queue a job; raise QueueFull when the queue is full.

        wanted() is asked just before the job runs; when it returns False the job is dropped
        and its future cancelled (the client that asked for it has gone). cost (the job's
        tokens) counts against the batch policy's max_cost: a worker leaves what its batch
        cannot take to the next worker instead of running it after its own.
        """
        future: Future = Future()
        try:
            self.jobs.put_nowait((job, future, wanted, cost))
        except Full:
            raise QueueFull(f"inference queue full ({self.jobs.maxsize} waiting)") from None
        return future

    def stop(self) -> None:
        """Ask the workers to finish after the jobs queued so far."""
        for _ in self.lanes:
            self.jobs.put((None, None, None, 0))

    def _housekeep(self, hook, name: str) -> None:
        try:
            hook()
        except Exception:  # housekeeping must never stop the worker
            log.exception("worker_%s_failed", name)

    def _still_wanted(self, wanted) -> bool:
        try:
            return bool(wanted())
        except Exception:  # a broken check must not drop work
            log.exception("worker_wanted_check_failed")
            return True

    def _quiet_now(self) -> bool:
        """Return True when no worker runs a job and none waits (call under _quiet)."""
        return self.jobs.empty() and not self.busy

    def _gather(self, first: tuple) -> list[tuple]:
        """Return first plus the jobs that join its batch (see the module docstring)."""
        batch = self.batch
        size = batch.size(first[0]) if batch else 0
        if not batch or not size or size >= batch.max_items:
            return [first]
        taken, items, cost = [first], size, first[3]
        max_cost = batch.max_cost or 0
        expected = max(self.batches[-RECENT:], default=1)
        waiting = self.concurrent  # worth a short wait for the rest
        deadline = time.monotonic() + batch.max_wait_s

        def fits(item) -> bool:  # a stop, an unbatchable or a too-big job stays for the next take
            size = batch.size(item[0]) if item[1] is not None else 0
            return bool(size) and items + size <= batch.max_items and \
                not (max_cost and cost + item[3] > max_cost)

        while items < batch.max_items and not (max_cost and cost >= max_cost):
            left = deadline - time.monotonic()
            try:
                item = self.jobs.take(0 if not waiting or left <= 0 or len(taken) >= expected
                                      else left, fits)
            except (Empty, NoFit):
                break
            taken.append(item)
            items, cost = items + batch.size(item[0]), cost + item[3]
        return taken

    def _wanted(self, taken: list[tuple]) -> list[tuple]:
        """Drop the jobs whose client has gone (their futures cancelled); keep the rest."""
        kept = []
        for job, future, wanted, cost in taken:
            if wanted is not None and not self._still_wanted(wanted):
                future.cancel()
            if future.set_running_or_notify_cancel():
                kept.append((job, future, cost))
        return kept

    def _execute(self, lane: _Lane, kept: list[tuple]) -> None:
        """Run the jobs (one alone, or as one batch) and settle their futures."""
        with self._quiet:
            lane.busy = len(kept)
            self._unsettled = True
        started = time.perf_counter()
        try:
            if len(kept) == 1:
                outcomes = [self._outcome(kept[0][0])]
            else:
                outcomes = self.batch.run_many([job for job, _, _ in kept],  # type: ignore[union-attr]
                                               [cost for _, _, cost in kept])
            for (_, future, _), outcome in zip(kept, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except BaseException as error:  # the worker outlives any batch
            for _, future, _ in kept:
                if not future.done():
                    future.set_exception(error)
        finally:
            lane.busy = 0
            self.observe(time.perf_counter() - started)
        self.batches = [*self.batches[-63:], len(kept)]

    def _outcome(self, job):
        try:
            return self.run(job)
        except BaseException as error:
            return error

    def _settle(self) -> None:
        """Run settled() once after the last job, when every worker is quiet."""
        with self._quiet:
            if self._unsettled and self._quiet_now():
                self._unsettled = False
                self._housekeep(self.settled, "settled")

    def _rest(self) -> None:
        """Wait out the thermal rest that any worker's last job asked for."""
        while (left := self._rest_until - time.monotonic()) > 0:
            time.sleep(left)

    def _loop(self, lane: _Lane) -> None:
        while True:
            if self._spaced:
                with self._turns:
                    done = self._turn(lane)
            else:
                done = self._turn(lane)
            if done:
                return

    def _turn(self, lane: _Lane) -> bool:
        """Take and run the next batch (after any thermal rest); return True on stop."""
        self._rest()
        try:
            first = self.jobs.take(self.settle_s if self._unsettled else None)
        except Empty:
            self._settle()
            return False
        if first[1] is None:
            return True
        kept = self._wanted(self._gather(first))
        if not kept:
            return False
        started = time.perf_counter()
        self._execute(lane, kept)
        took = time.perf_counter() - started
        with self._quiet:
            if self._quiet_now():
                self._housekeep(self.idle, "idle")
        gap = self.spacing(took)
        with self._quiet:
            self._spaced = gap > 0
            if gap > 0:
                self._rest_until = max(self._rest_until, time.monotonic() + gap)
        return False
