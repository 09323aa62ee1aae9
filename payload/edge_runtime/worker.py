"""One inference thread fed by a bounded queue; a full queue refuses work at once.

With a batch policy the thread takes several queued jobs at once (micro-batching): it drains
what already waits and, only when one of the recent batches held more than one job (clients are
concurrent), waits up to max_wait_s for as many jobs as the largest of them. Waiting on the
recent largest, not the last, keeps a late client from splitting the next batch in two. A lone
client never waits (after a burst, for RECENT of its requests at most).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

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
    max_items texts a batch, run_many(jobs) returns one result or exception per job."""

    size: Callable[[object], int]
    run_many: Callable[[list], list]
    max_items: int = 16
    max_wait_s: float = 0.004


class InferenceWorker:
    """Run run(job) for queued jobs on one thread; spacing() returns the idle time after each.

    observe(seconds) is called with each job's run time (for metrics); spacing(seconds) lets the
    thermal guard stretch the gap between jobs; idle() runs after a job when no other waits
    (housekeeping nobody has to wait for); settled() runs once when no job came for settle_s
    seconds after the last one (housekeeping that should not land between two requests).
    """

    def __init__(self, run, depth: int, observe=lambda s: None, spacing=lambda s: 0.0,
                 idle=lambda: None, settled=lambda: None, settle_s: float = 1.0,
                 batch: BatchPolicy | None = None):
        self.run, self.observe, self.spacing, self.idle = run, observe, spacing, idle
        self.settled, self.settle_s = settled, settle_s
        self.batch = batch  # None: one job at a time; set before start()
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.busy = 0  # jobs running now
        self.batches: list[int] = []  # jobs per batch run, the latest 64 (tests, metrics)
        self._held: tuple | None = None  # taken from the queue but left for the next batch
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    @property
    def depth(self) -> int:
        """Return the number of jobs waiting or running."""
        return self.jobs.qsize() + self.busy + (self._held is not None)

    @property
    def concurrent(self) -> bool:
        """Return True while clients are concurrent: one of the recent batches held several jobs."""
        return max(self.batches[-RECENT:], default=1) > 1

    def start(self) -> InferenceWorker:
        """Start the worker thread."""
        self._thread.start()
        return self

    def submit(self, job, wanted=None) -> Future:
        """Queue a job; raise QueueFull when the queue is full.

        wanted() is asked just before the job runs; when it returns False the job is dropped
        and its future cancelled (the client that asked for it has gone).
        """
        future: Future = Future()
        try:
            self.jobs.put_nowait((job, future, wanted))
        except queue.Full:
            raise QueueFull(f"inference queue full ({self.jobs.maxsize} waiting)") from None
        return future

    def stop(self) -> None:
        """Ask the worker to finish after the jobs queued so far."""
        self.jobs.put((None, None, None))

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

    def _next(self, timeout: float | None) -> tuple:
        """Return the held-back job if any, else the next from the queue (queue.Empty)."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self.jobs.get(timeout=timeout)

    def _gather(self, first: tuple) -> list[tuple]:
        """Return first plus the jobs that join its batch (see the module docstring)."""
        batch = self.batch
        size = batch.size(first[0]) if batch else 0
        if not batch or not size or size >= batch.max_items:
            return [first]
        taken, items = [first], size
        expected = max(self.batches[-RECENT:], default=1)
        waiting = self.concurrent  # worth a short wait for the rest
        deadline = time.monotonic() + batch.max_wait_s
        while items < batch.max_items:
            left = deadline - time.monotonic()
            try:
                item = self.jobs.get_nowait() if not waiting or left <= 0 or \
                    len(taken) >= expected else self.jobs.get(timeout=left)
            except queue.Empty:
                break
            job_size = batch.size(item[0]) if item[1] is not None else 0
            if not job_size or items + job_size > batch.max_items:
                self._held = item  # a stop, an unbatchable or a too-big job goes next, alone
                break
            taken.append(item)
            items += job_size
        return taken

    def _wanted(self, taken: list[tuple]) -> list[tuple]:
        """Drop the jobs whose client has gone (their futures cancelled); keep the rest."""
        kept = []
        for job, future, wanted in taken:
            if wanted is not None and not self._still_wanted(wanted):
                future.cancel()
            if future.set_running_or_notify_cancel():
                kept.append((job, future))
        return kept

    def _execute(self, kept: list[tuple]) -> None:
        """Run the jobs (one alone, or as one batch) and settle their futures."""
        self.busy = len(kept)
        started = time.perf_counter()
        try:
            if len(kept) == 1:
                outcomes = [self._outcome(kept[0][0])]
            else:
                outcomes = self.batch.run_many([job for job, _ in kept])  # type: ignore[union-attr]
            for (_, future), outcome in zip(kept, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except BaseException as error:  # the worker outlives any batch
            for _, future in kept:
                if not future.done():
                    future.set_exception(error)
        finally:
            self.busy = 0
            self.observe(time.perf_counter() - started)
        self.batches = [*self.batches[-63:], len(kept)]

    def _outcome(self, job):
        try:
            return self.run(job)
        except BaseException as error:
            return error

    def _loop(self) -> None:
        unsettled = False
        while True:
            try:
                first = self._next(self.settle_s if unsettled else None)
            except queue.Empty:
                unsettled = False
                self._housekeep(self.settled, "settled")
                continue
            if first[1] is None:
                return
            kept = self._wanted(self._gather(first))
            if not kept:
                continue
            started = time.perf_counter()
            self._execute(kept)
            took = time.perf_counter() - started
            unsettled = True
            if self.jobs.empty() and self._held is None:
                self._housekeep(self.idle, "idle")
            gap = self.spacing(took)
            if gap > 0:
                time.sleep(gap)
