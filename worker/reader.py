"""Reader step: poll the consumer into micro-batches, commit what was written, follow
rebalances.

A micro-batch is ready when it holds ``worker.batch`` records or when its first record has waited
``worker.max_wait_ms``. When the pipeline is full the partitions are paused and polling goes on
only to stay in the group (and to see rebalances). The consumer is not thread-safe: every call on
it happens in the thread that calls these methods (the worker's main thread), rebalance callbacks
included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from twinstream.settings import WorkerSettings
from worker.batch import Batch
from worker.logs import event
from worker.membership import close_consumer
from worker.metrics import WorkerMetrics
from worker.tracker import OffsetTracker

log = logging.getLogger("twinstream.worker")

IDLE_POLL_MS = 200
LAG_EVERY_S = 1.0


class Reader:
    def __init__(self, consumer: KafkaConsumer, cfg: WorkerSettings, metrics: WorkerMetrics,
                 on_assignment: Callable[[], None] = lambda: None):
        self.on_assignment = on_assignment  # told after partitions moved (the heartbeat)
        self.consumer = consumer
        self.cfg = cfg
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self.assigned: list[TopicPartition] = []
        self._pending: list = []  # polled, not yet handed out as a batch
        self._pending_since = 0.0
        self._paused = False
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._read_upto: dict[TopicPartition, int] = {}
        # Last record (or assignment): idle time counts from there, not from before the join.
        self.last_record: float | None = None
        # Since when this consumer owns no partition (None while it owns some): a group that
        # never assigns (a wedged broker group) shows here, in /health and in `status`.
        self.unassigned_since: float | None = time.monotonic()

    def subscribe(self, topic: str, before_revoke: Callable[[], None]) -> None:
        """``before_revoke`` runs when partitions are about to move: finish what is in flight."""
        self.consumer.subscribe([topic], listener=_Rebalance(self, before_revoke))

    # --- reading -------------------------------------------------------------------------------

    def poll(self, room: bool) -> list | None:
        """The records of the next micro-batch when one is ready, else None.

        ``room``: whether the pipeline can take a batch; without room the partitions are paused.
        """
        self._pause(not room)
        if not room:
            self.consumer.poll(timeout_ms=0)  # stays in the group, sees rebalances
            return None
        now = time.monotonic()
        wait_ms = (max(1, int(self.cfg.max_wait_ms - (now - self._pending_since) * 1000))
                   if self._pending else IDLE_POLL_MS)
        polled = self.consumer.poll(timeout_ms=wait_ms,
                                    max_records=self.cfg.batch - len(self._pending))
        records = [r for rs in polled.values() for r in rs]
        now = time.monotonic()
        if records:
            if not self._pending:
                self._pending_since = now
            self._pending.extend(records)
            self.last_record = now
            for r in records:
                self._read_upto[TopicPartition(r.topic, r.partition)] = r.offset + 1
        if self._pending and (len(self._pending) >= self.cfg.batch
                              or now - self._pending_since >= self.cfg.max_wait_ms / 1000):
            return self.take_pending()
        return None

    def take_pending(self) -> list:
        """The records polled so far, ready or not (at shutdown)."""
        records, self._pending = self._pending, []
        self.tracker.read(records)
        return records

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    # --- committing ----------------------------------------------------------------------------

    def finished(self, batch: Batch) -> None:
        """A batch is in Redis and in the dead-letter topic: its records may be committed."""
        self.tracker.finished(batch.records, batch.generation)

    def commit(self, force: bool = False, wait: bool = True) -> None:
        """Commit the positions that moved (at most every ``commit_interval_ms`` unless forced).

        ``wait=False`` from rebalance callbacks: kafka-python 3 runs them on its network thread,
        where a blocking commit raises (and took the worker down as soon as a revocation found
        written-but-uncommitted records). The request still goes out before the JoinGroup or
        LeaveGroup that follows on the same connection; if it fails, the next owner replays."""
        offsets = self.tracker.to_commit()
        if not offsets:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.cfg.commit_interval_ms / 1000:
            return
        if not wait:
            self.consumer.commit_async({tp: OffsetAndMetadata(pos, "", -1)
                                        for tp, pos in offsets.items()},
                                       callback=self._async_commit_done)
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(pos, "", -1)
                                  for tp, pos in offsets.items()})
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved: their new owner replays from the last commit; upserts are
            # idempotent, so nothing is lost and nothing is doubled.
            event(log, "commit failed; records will be re-delivered", logging.WARNING,
                  error=str(exc)[:200])
            return
        self.tracker.committed(offsets)
        self._last_commit = now
        self.metrics.committed()

    def _async_commit_done(self, _offsets, response) -> None:
        if isinstance(response, Exception):
            event(log, "commit at a rebalance failed; records will be re-delivered",
                  logging.WARNING, error=str(response)[:200])

    def report_lag(self) -> None:
        """Records after the committed position, per assigned partition (at most once a second)."""
        now = time.monotonic()
        if now - self._last_lag < LAG_EVERY_S:
            return
        self._last_lag = now
        for tp in self.assigned:
            high = self.consumer.highwater(tp)
            position = self.tracker.position(tp) or self._read_upto.get(tp)
            if high is not None and position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    def close(self) -> None:
        close_consumer(self.consumer)  # a follower leaves at once, a leader by session timeout

    # --- partitions ----------------------------------------------------------------------------

    def _pause(self, paused: bool) -> None:
        if paused != self._paused or (paused and not self.consumer.paused()):
            assignment = list(self.consumer.assignment())
            if paused:
                self.consumer.pause(*assignment)
            else:
                self.consumer.resume(*assignment)
            self._paused = paused

    def _revoked(self) -> None:
        self._pending = []  # polled but not started: the next owner reads them again
        self.commit(force=True, wait=False)  # on kafka-python's network thread: no blocking
        self.tracker.reset()
        self.metrics.lag.clear()
        self.assigned = []
        self.unassigned_since = self.unassigned_since or time.monotonic()
        self.on_assignment()

    def _assigned(self, assigned) -> None:
        self.tracker.reset()
        self._paused = False
        self._read_upto.clear()
        self.assigned = sorted(assigned)
        self.last_record = time.monotonic()
        self.unassigned_since = None if self.assigned else (self.unassigned_since
                                                            or time.monotonic())
        event(log, "partitions assigned",
              partitions=",".join(str(tp.partition) for tp in self.assigned) or "none")
        self.on_assignment()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, reader: Reader, before_revoke: Callable[[], None]):
        self.reader = reader
        self.before_revoke = before_revoke

    def on_partitions_revoked(self, revoked) -> None:
        self.reader._pending = []  # not handed out: nothing to finish for them
        self.before_revoke()
        self.reader._revoked()

    def on_partitions_assigned(self, assigned) -> None:
        self.reader._assigned(assigned)
