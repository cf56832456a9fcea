"""Writer step: the batch's index operations into Redis (pipelined, idempotent), its failures into
the dead-letter topic; then, and only then, the batch counts as written.

Redis or the broker failing is the world's fault, not the record's: the writer keeps the batch
and retries with backoff and jitter until it succeeds (reporting it in the health state), or
until the worker gives up at shutdown, in which case the batch is not committed and will be
re-delivered.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kafka.errors import KafkaError

from index import layout
from index.connection import TRANSIENT_ERRORS, TRANSIENT_REPLIES
from index.store import VectorIndex
from twinstream.errors import ServiceUnavailable
from worker.batch import Batch, Delete, Upsert, index_operations
from worker.dlq import DeadLetterSender
from worker.health import Health
from worker.logs import event
from worker.metrics import WorkerMetrics
from worker.retry import Backoff, GaveUp, retry

log = logging.getLogger("twinstream.worker")

# Redis replies that mean "not now" rather than "never".
def redis_is_transient(exc: Exception) -> bool:
    """Worth retrying: the index reports an unreachable or not-yet-ready Redis as
    ServiceUnavailable; raw redis-py errors can still come from calls it does not wrap."""
    if isinstance(exc, (ServiceUnavailable, redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(exc, TRANSIENT_ERRORS) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith(TRANSIENT_REPLIES))


class IndexVanished(ServiceUnavailable):
    """The index's alias or metadata is gone (FLUSHALL, a restart without persistence, a
    failover to an empty replica): writes wait, nothing is committed, health says why."""


def kafka_is_transient(exc: Exception) -> bool:
    return isinstance(exc, KafkaError)


class Writer:
    name = "write"

    def __init__(self, index: VectorIndex, dead_letters: DeadLetterSender, model_version: str,
                 health: Health, metrics: WorkerMetrics, give_up: threading.Event,
                 backoff: Backoff = Backoff(), index_gone: threading.Event | None = None):
        self.index = index
        self.dead_letters = dead_letters
        self.model_version = model_version
        self.health = health
        self.metrics = metrics
        self.give_up = give_up
        self.backoff = backoff
        self.index_gone = index_gone or threading.Event()  # set by the worker's liveness check

    def __call__(self, batch: Batch) -> None:
        ops = index_operations(batch.items, self.model_version)
        try:
            if ops:
                retry(lambda: self._apply(ops), redis_is_transient, self.give_up, self.backoff,
                      self._failed("redis"))
                self._recovered("redis")
            failures = batch.failures
            if failures:
                retry(lambda: self.dead_letters.send(failures), kafka_is_transient,
                      self.give_up, self.backoff, self._failed("kafka"))
                self._recovered("kafka")
        except GaveUp:
            event(log, "gave up writing a batch; it will be re-delivered", logging.WARNING,
                  batch=batch.seq, records=len(batch.items))
            return
        batch.written_at = time.monotonic()  # a durability wait after this covers it
        batch.written = True

    def rewrite(self, batch: Batch) -> None:
        """The batch's index operations again (idempotent), after Redis may have lost them."""
        self._apply(index_operations(batch.items, self.model_version))

    def _apply(self, ops: list[Upsert | Delete]) -> None:
        # Never write into a vector set nothing points to: after a FLUSHALL the first VADD
        # would quietly create an orphan (one EXISTS a batch; the liveness check sees the alias).
        info = self.index.info
        if self.index_gone.is_set() or not self.index.client.exists(
                layout.meta_key(info.name, info.version)):
            self.index_gone.set()
            raise IndexVanished(f"index {info.name!r} version {info.version} vanished from "
                                "Redis (alias or metadata gone); holding the batch")
        upserts = [op for op in ops if isinstance(op, Upsert)]
        deletes = [op.id for op in ops if isinstance(op, Delete)]
        # Thumbnail first: an element is never visible without its picture.
        self.index.put_thumbnails({op.id: op.thumbnail for op in upserts if op.thumbnail})
        self.index.upsert([(op.id, op.vector, op.attributes) for op in upserts])
        self.index.delete(deletes)

    def _failed(self, target: str):
        def report(exc: Exception, attempt: int, delay: float) -> None:
            self.health.failing(target, f"{type(exc).__name__}: {exc}")
            self.metrics.retries.labels(target).inc()
            self.metrics.healthy.set(0)
            level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
            event(log, f"{target} write failed; keeping the batch and retrying", level,
                  attempt=attempt, retry_in_s=round(delay, 2), error=str(exc)[:200])
        return report

    def _recovered(self, target: str) -> None:
        if target in self.health.snapshot()["failing"]:
            event(log, f"{target} is back; batch written")
        self.health.ok(target)
        if self.health.healthy:
            self.metrics.healthy.set(1)
