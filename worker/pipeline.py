"""Runs the worker's steps (decoder -> embedder -> writer) each in a thread of its own, joined by
queues, so that batch n+1 decodes while batch n is embedded and batch n-1 written.

Batches leave in the order they entered (one thread per step, FIFO queues), which keeps the
records of an id in order. The caller bounds the work in flight: it submits only while
``in_flight < capacity``. A step that raises (a bug, not bad data: steps turn bad data into
dead letters) stops the pipeline; the worker then exits without committing that batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from worker.batch import Batch

_STOP = object()


class Step(Protocol):
    name: str

    def __call__(self, batch: Batch) -> None: ...


class Pipeline:
    def __init__(self, steps: Sequence[Step], capacity: int,
                 observe: Callable[[str, float], None] = lambda _step, _s: None):
        self.steps = list(steps)
        self.capacity = capacity
        self.observe = observe
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(len(self.steps) + 1)]
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"step-{s.name}",
                                          daemon=True) for i, s in enumerate(self.steps)]
        self.error: BaseException | None = None
        self.in_flight = 0  # touched by the caller's thread only
        # Per step: (batch seq, monotonic start) of the batch it is working on, or None.
        self._busy: list[tuple[int, float] | None] = [None] * len(self.steps)

    def start(self) -> Pipeline:
        for t in self._threads:
            t.start()
        return self

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.capacity

    def submit(self, batch: Batch) -> None:
        self.in_flight += 1
        self._queues[0].put(batch)

    def finished(self, timeout_s: float = 0.0) -> list[Batch]:
        """Batches that went through every step (waits up to ``timeout_s`` for the first)."""
        done = self._queues[-1]
        out = []
        try:
            out.append(done.get(timeout=timeout_s) if timeout_s > 0 else done.get_nowait())
            while True:
                out.append(done.get_nowait())
        except queue.Empty:
            pass
        self.in_flight -= len(out)
        return out

    def stalled(self, bound_s: float) -> tuple[str, int, float] | None:
        """The step that has held one batch for more than ``bound_s`` seconds, as (step name,
        batch seq, seconds), the longest first; None when every batch moves."""
        now = time.monotonic()
        worst = None
        for step, busy in zip(self.steps, list(self._busy), strict=True):
            if busy is not None and now - busy[1] > bound_s \
                    and (worst is None or now - busy[1] > worst[2]):
                worst = (step.name, busy[0], now - busy[1])
        return worst

    def stop(self, timeout_s: float = 10.0) -> None:
        self._queues[0].put(_STOP)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, i: int) -> None:
        step, inbox, outbox = self.steps[i], self._queues[i], self._queues[i + 1]
        while True:
            batch = inbox.get()
            if batch is _STOP:
                if i + 1 < len(self.steps):  # the done queue never sees the marker
                    outbox.put(_STOP)
                return
            if self.error is not None:
                continue  # stopped by an earlier failure: let batches fall, uncommitted
            started = time.perf_counter()
            self._busy[i] = (batch.seq, time.monotonic())
            try:
                step(batch)
            except BaseException as exc:
                self.error = exc
                continue
            finally:
                self._busy[i] = None
            seconds = time.perf_counter() - started
            batch.seconds[step.name] = seconds
            self.observe(step.name, seconds)
            outbox.put(batch)
