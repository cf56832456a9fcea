"""Which offsets a worker may commit: per partition, up to the last record of an unbroken run of
finished ones (each in Redis or in the dead-letter topic).

Batches finish in the order they were read (one FIFO pipeline), but the tracker does not rely on
it. After a rebalance the consumer re-reads from the committed offsets, so records still in flight
from before it are re-delivered; the tracker starts a new *generation* then and ignores what
finishes from an older one (its records come round again and are written idempotently).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from kafka import TopicPartition


class OffsetTracker:
    def __init__(self) -> None:
        self.generation = 0
        self._in_flight: dict[TopicPartition, deque[int]] = {}
        self._finished: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # commit position reached (last done + 1)
        self._committed: dict[TopicPartition, int] = {}
        self._first: dict[TopicPartition, int] = {}  # first offset read since the assignment

    def reset(self) -> None:
        """Forget everything in flight: the partitions were (re)assigned."""
        self.generation += 1
        self._in_flight.clear()
        self._finished.clear()
        self._next.clear()
        self._committed.clear()
        self._first.clear()

    def read(self, records: Iterable[Any]) -> None:
        """Records handed to the pipeline, in the order the consumer returned them."""
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._in_flight.setdefault(tp, deque()).append(r.offset)
            self._first.setdefault(tp, r.offset)

    def finished(self, records: Iterable[Any], generation: int) -> None:
        """Records now in Redis or in the dead-letter topic."""
        if generation != self.generation:
            return
        touched = set()
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._finished.setdefault(tp, set()).add(r.offset)
            touched.add(tp)
        for tp in touched:
            queue, done = self._in_flight.get(tp, deque()), self._finished[tp]
            while queue and queue[0] in done:
                offset = queue.popleft()
                done.discard(offset)
                self._next[tp] = offset + 1

    def to_commit(self) -> dict[TopicPartition, int]:
        """Positions that moved since the last commit (the offset of the next record to read)."""
        return {tp: pos for tp, pos in self._next.items() if self._committed.get(tp) != pos}

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def in_flight(self) -> int:
        """Records read and not yet in Redis or the dead-letter topic (or done out of order)."""
        return sum(len(q) for q in self._in_flight.values())

    def written_uncommitted(self) -> int:
        """Records written (an unbroken run) whose offsets are not committed yet."""
        return sum(pos - self._committed.get(tp, self._first.get(tp, pos))
                   for tp, pos in self._next.items())

    def position(self, tp: TopicPartition) -> int | None:
        """The committed position of a partition, if this worker committed one."""
        return self._committed.get(tp)
