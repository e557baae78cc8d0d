"""A queue of files to work on, and the threads that work on it.

Each path is in the queue at most once, and never in two workers' hands at once: a path queued again while
a worker has it waits until that worker is done. Small files go first without starving big ones: a job's
rank is the time it was queued plus the time its file takes to read at `RATE`, so a small file queued now
passes a big one queued a moment ago, and a big file is overtaken only by files queued within its own
reading time.

Memory is one small record per queued path, whatever the burst.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

log = logging.getLogger("vaereg.watch.daemon")

T = TypeVar("T")

#: Bytes per second a file's size is weighed at against its waiting time (a typical disk's reading speed).
RATE = 200e6


@dataclass
class _Job(Generic[T]):
    rank: float
    seq: int
    payload: T


class JobQueue(Generic[T]):
    """Paths with a payload each, taken smallest-rank first; thread-safe."""

    def __init__(self, *, rate: float = RATE, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._jobs: dict[str, _Job[T]] = {}
        self._held: dict[str, _Job[T]] = {}  # queued again while a worker has it
        self._in_hand: set[str] = set()
        self._seq = itertools.count()
        self._closed = False

    def put(self, path: str, size: int, payload: T) -> bool:
        """Queue `path`; if it is queued already, only its payload is updated (it keeps its place).
        Returns whether a new job was made."""
        with self._cond:
            if self._closed:
                return False
            job = self._jobs.get(path) or self._held.get(path)
            if job is not None:
                job.payload = payload
                return False
            job = _Job(self._clock() + size / self._rate, next(self._seq), payload)
            self._jobs[path] = job
            heapq.heappush(self._heap, (job.rank, job.seq, path))
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> tuple[str, T] | None:
        """The next job, marked in hand until `done`; None once the queue is closed (or on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                while self._heap:
                    _, seq, path = heapq.heappop(self._heap)
                    job = self._jobs.get(path)
                    if job is None or job.seq != seq:
                        continue  # discarded or replaced
                    del self._jobs[path]
                    if path in self._in_hand:
                        self._held[path] = job
                        continue
                    self._in_hand.add(path)
                    return path, job.payload
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def done(self, path: str) -> None:
        """The worker is finished with `path`; a job held back for it becomes takeable."""
        with self._cond:
            self._in_hand.discard(path)
            job = self._held.pop(path, None)
            if job is not None and not self._closed:
                self._jobs[path] = job
                heapq.heappush(self._heap, (job.rank, job.seq, path))
                self._cond.notify()

    def discard(self, path: str) -> bool:
        """Forget a queued job (its file is gone or changed); whether there was one. A job in hand is not
        affected."""
        with self._cond:
            queued = self._jobs.pop(path, None)
            held = self._held.pop(path, None)
            return queued is not None or held is not None

    def close(self) -> None:
        """Take no more jobs; waiting workers get None."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._held.clear()
            self._heap.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs) + len(self._held)

    @property
    def in_hand(self) -> int:
        with self._cond:
            return len(self._in_hand)

    def __contains__(self, path: object) -> bool:
        with self._cond:
            return path in self._jobs or path in self._held or path in self._in_hand


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by `nice` (Linux keeps a nice value per thread; elsewhere the call would
    name the whole process, so it is left alone there). Threads it starts inherit it."""
    if nice and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


class Workers(Generic[T]):
    """`count` threads taking jobs from `queue` and giving them to `handle`.

    An exception from `handle` goes to `on_error` with the path, and the thread carries on. The threads are
    daemon threads: at shutdown a file still being read is abandoned rather than waited for. On Linux,
    `nice` lowers the threads' CPU priority (threads they start inherit it), for work in the background.
    """

    def __init__(
        self,
        queue: JobQueue[T],
        handle: Callable[[str, T], None],
        on_error: Callable[[str, BaseException], None],
        *,
        count: int,
        name: str,
        nice: int = 0,
    ) -> None:
        self.queue = queue
        self._nice = nice
        self._handle = handle
        self._on_error = on_error
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True) for n in range(max(1, count))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds in all) for the threads to end; whether they all did."""
        deadline = time.monotonic() + timeout
        started = [thread for thread in self._threads if thread.ident is not None]
        for thread in started:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in started)

    def _run(self) -> None:
        lower_priority(self._nice)
        while True:
            item = self.queue.get()
            if item is None:
                return
            path, payload = item
            try:
                self._handle(path, payload)
            except Exception as exc:
                try:
                    self._on_error(path, exc)
                except Exception:  # the error reporter must not take the worker down either
                    log.exception("while reporting an error about %s", path)
            finally:
                self.queue.done(path)
