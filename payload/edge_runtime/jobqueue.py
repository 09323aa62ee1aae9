"""The inference queue: bounded, first in first out, and a take that leaves a job that does not fit.

queue.Queue can only hand out its head; a worker whose batch is full had to take the next job
anyway and hold it back for its own next batch, so that request waited for the whole batch to
finish while another worker may have been free. take(fits=...) looks at the head under the lock
and leaves it there for whichever worker comes next.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, Full

__all__ = ["JobQueue", "Empty", "Full", "NoFit"]


class NoFit(Exception):
    """The head of the queue does not fit the caller's batch; it stays at the head."""


class JobQueue:
    """A bounded FIFO of jobs shared by the inference workers.

    A new job wakes the worker that went idle last (a stack of waiting workers, not the
    Condition's first-come order): with a lone client the same worker, on a warm core and
    caches, runs every request, instead of the two taking turns.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._idle: list[threading.Event] = []  # waiting takers, the latest last

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def _wake_one(self) -> None:
        if self._items and self._idle:
            self._idle.pop().set()

    def put_nowait(self, item) -> None:
        """Append item; raise Full when maxsize items wait already."""
        with self._lock:
            if len(self._items) >= self.maxsize:
                raise Full
            self._items.append(item)
            self._wake_one()

    def put(self, item) -> None:
        """Append item, waiting for room (the workers drain the queue; only stop() uses it)."""
        with self._not_full:
            while len(self._items) >= self.maxsize:
                self._not_full.wait()
            self._items.append(item)
            self._wake_one()

    def take(self, timeout: float | None = None, fits: Callable[[object], bool] | None = None):
        """Return the head; wait up to timeout seconds for one (None: for ever; raise Empty).

        With fits, a head for which fits(head) is False stays where it is: raise NoFit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items:
                    if fits is not None and not fits(self._items[0]):
                        self._wake_one()  # the head is still there for a worker that can take it
                        raise NoFit
                    item = self._items.popleft()
                    self._not_full.notify()
                    self._wake_one()
                    return item
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Empty
                woken = threading.Event()
                self._idle.append(woken)
            woken.wait(left)
            with self._lock:
                if woken in self._idle:  # timed out: nobody will set it now
                    self._idle.remove(woken)
