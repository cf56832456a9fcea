"""Reader step: poll the consumer into micro-batches, commit what was written, follow
rebalances.

A micro-batch is ready when it holds ``worker.batch`` records or when its first record has waited
``worker.max_wait_ms``. When the pipeline is full the partitions are paused and polling goes on
only to stay in the group (and to see rebalances). The consumer is not thread-safe: every call on
it happens in the thread that calls these methods (the worker's main thread). Rebalance callbacks
run while that thread waits inside ``poll`` (on kafka-python's IO thread, so they must not make
blocking consumer calls).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, CorruptRecordError, InvalidRecordError, KafkaError
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


class UnreadableRecord(NamedTuple):
    """Stands in for a record the Kafka client cannot parse (a header name that is not UTF-8, a
    corrupt batch): it travels through the pipeline like any record, so that it becomes a dead
    letter and its offset is committed like every other one."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None = None
    value: bytes | None = None
    headers: list = []  # noqa: RUF012 - a NamedTuple default, never mutated


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
        # Where reading started after the assignment: the committed position the group had.
        self._read_from: dict[TopicPartition, int] = {}
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
        try:
            polled = self.consumer.poll(timeout_ms=wait_ms,
                                        max_records=self.cfg.batch - len(self._pending))
            records = [r for rs in polled.values() for r in rs]
        except (CorruptRecordError, InvalidRecordError) as exc:  # a record, not the broker
            records = self._skip_unreadable(exc)
        except KafkaError:
            raise  # the broker's problem, not a record's
        except Exception as exc:  # the client could not parse the record at a position
            records = self._skip_unreadable(exc)
        now = time.monotonic()
        if records:
            if not self._pending:
                self._pending_since = now
            self._pending.extend(records)
            self.last_record = now
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                self._read_from.setdefault(tp, r.offset)
        if self._pending and (len(self._pending) >= self.cfg.batch
                              or now - self._pending_since >= self.cfg.max_wait_ms / 1000):
            return self.take_pending()
        return None

    def _skip_unreadable(self, exc: Exception) -> list:
        """Step over the record that makes ``poll`` raise, as Kafka's Java consumer lets an
        application do (RecordDeserializationException); otherwise every poll raises again and
        the partition is stuck for good. Returns an ``UnreadableRecord`` in its place (it
        becomes a dead letter, so its offset is committed like any other), or nothing when
        there turns out to be no record to step over.

        kafka-python does not say which record failed. Its fetcher keeps the partition's
        records it was reading, at the record that failed, and leaves them behind with a dead
        iterator that the next poll would spin on for ever: that part is drained here, and the
        record at its partition's position is stepped over. kafka-python parses a producer
        batch from its start, so the records after an unreadable one *in the same batch*
        cannot be read either and are stepped over the same way, one by one, each a dead letter
        naming its offset; other producers' records are in other batches.
        """
        fetcher = getattr(self.consumer, "_fetcher", None)
        part = getattr(fetcher, "_next_partition_records", None)
        tp = getattr(part, "topic_partition", None)
        if tp is None or tp not in self.consumer.assignment():
            raise exc  # cannot tell which record: better to stop than to skip blindly
        part.drain()
        offset = self.consumer.position(tp)
        high = self.consumer.highwater(tp)
        if high is not None and offset >= high:
            return []  # nothing there: a fresh fetch of the partition tells what is next
        return [self._unreadable(tp, exc)]

    def _unreadable(self, tp: TopicPartition, exc: Exception) -> UnreadableRecord:
        offset = self.consumer.position(tp)
        self.consumer.seek(tp, offset + 1)
        reason = (f"the record (or an earlier one of its producer batch) cannot be read by the "
                  f"Kafka client ({type(exc).__name__}: {str(exc)[:120]})")
        event(log, "unreadable record skipped", logging.WARNING, partition=tp.partition,
              offset=offset, error=reason)
        return UnreadableRecord(tp.topic, tp.partition, offset, reason)

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

    def commit(self, force: bool = False) -> None:
        """Commit the positions that moved (at most every ``commit_interval_ms`` unless forced)."""
        offsets = self.tracker.to_commit()
        if not offsets:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.cfg.commit_interval_ms / 1000:
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

    def report_lag(self) -> None:
        """Records after the committed position, per assigned partition (at most once a second)."""
        now = time.monotonic()
        if now - self._last_lag < LAG_EVERY_S:
            return
        self._last_lag = now
        for tp in self.assigned:
            high = self.consumer.highwater(tp)
            # Pending = not committed: read but unwritten records count, or a stuck batch would
            # show a lag of 0 while nothing moves.
            position = self.tracker.position(tp)
            if position is None:
                position = self._read_from.get(tp)
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
        # kafka-python 3 runs this callback on its IO thread, where a blocking commit raises
        # ("Cannot block on net.run() from the IO thread") and kills the worker. An async commit
        # queued here still reaches the coordinator before the JoinGroup that follows on the
        # same connection; if it is lost anyway, the next owner replays (idempotently).
        offsets = self.tracker.to_commit()
        if offsets:
            try:
                self.consumer.commit_async({tp: OffsetAndMetadata(pos, "", -1)
                                            for tp, pos in offsets.items()})
            except KafkaError as exc:
                event(log, "commit at rebalance failed; records will be re-delivered",
                      logging.WARNING, error=str(exc)[:200])
        self.tracker.reset()
        self.metrics.lag.clear()
        self.assigned = []
        self.unassigned_since = self.unassigned_since or time.monotonic()
        self.on_assignment()

    def _assigned(self, assigned) -> None:
        self.tracker.reset()
        self._paused = False
        self._read_from.clear()
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
