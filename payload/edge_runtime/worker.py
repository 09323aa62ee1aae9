"""One inference thread fed by a bounded queue; a full queue refuses work at once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

__all__ = ["InferenceWorker", "QueueFull", "Abandoned"]

log = logging.getLogger("edge_runtime")


class QueueFull(Exception):
    """The queue holds queue_depth jobs already."""


class Abandoned(ConnectionError):
    """The client went away before the worker reached its job; the job was dropped."""


class InferenceWorker:
    """Run run(job) for queued jobs on one thread; spacing() returns the idle time after each.

    observe(seconds) is called with each job's run time (for metrics); spacing(seconds) lets the
    thermal guard stretch the gap between jobs; idle() runs after a job when no other waits
    (housekeeping nobody has to wait for); settled() runs once when no job came for settle_s
    seconds after the last one (housekeeping that should not land between two requests).
    """

    def __init__(self, run, depth: int, observe=lambda s: None, spacing=lambda s: 0.0,
                 idle=lambda: None, settled=lambda: None, settle_s: float = 1.0):
        self.run, self.observe, self.spacing, self.idle = run, observe, spacing, idle
        self.settled, self.settle_s = settled, settle_s
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    @property
    def depth(self) -> int:
        """Return the number of jobs waiting or running."""
        return self.jobs.qsize() + (1 if self.busy else 0)

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

    def _loop(self) -> None:
        unsettled = False
        while True:
            try:
                job, future, wanted = self.jobs.get(timeout=self.settle_s if unsettled else None)
            except queue.Empty:
                unsettled = False
                self._housekeep(self.settled, "settled")
                continue
            if future is None:
                return
            if wanted is not None and not self._still_wanted(wanted):
                future.cancel()
            if not future.set_running_or_notify_cancel():
                continue
            self.busy = True
            started = time.perf_counter()
            try:
                future.set_result(self.run(job))
            except BaseException as error:  # the worker outlives any one job
                future.set_exception(error)
            finally:
                took = time.perf_counter() - started
                self.busy = False
                self.observe(took)
            unsettled = True
            if self.jobs.empty():
                self._housekeep(self.idle, "idle")
            gap = self.spacing(took)
            if gap > 0:
                time.sleep(gap)
