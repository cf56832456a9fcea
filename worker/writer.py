"""Writer step: the batch's index operations into Redis (pipelined, idempotent), its failures into
the dead-letter topic; then, and only then, the batch counts as written.

What belongs to one record (attributes Redis cannot store, a vector of the wrong kind, a command
Redis refuses for that element) fails that record: it becomes a dead letter with stage ``write``
and the rest of the batch is written. Redis or the broker failing is the world's fault, not the
record's: the writer keeps the batch and retries with backoff and jitter until it succeeds
(reporting it in the health state), or until the worker gives up at shutdown, in which case the
batch is not committed and will be re-delivered. An error that is neither (a key of the index
holding something else, a bug) is treated like the world failing: retried and reported, never a
crash that would bring the same batch back to the next worker in a loop.
"""

from __future__ import annotations

import logging
import threading
import time

from index import layout
from index.identities import Identities
from index.store import VectorIndex
from twinstream.errors import ServiceUnavailable, TwinstreamError
from worker.batch import Batch, Delete, Upsert, index_operations
from worker.dlq import DeadLetterSender
from worker.health import Health
from worker.logs import event
from worker.metrics import WorkerMetrics
from worker.retry import Backoff, GaveUp, retry

log = logging.getLogger("twinstream.worker")


class IndexVanished(ServiceUnavailable):
    """The index's alias or metadata is gone (FLUSHALL, a restart without persistence, a
    failover to an empty replica): writes wait, nothing is committed, health says why."""


def always(_exc: Exception) -> bool:
    """Per-record problems are already dead letters when the write is attempted: whatever still
    fails the batch is the world's (or a bug's), and waiting beats a crash loop."""
    return True


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
        try:
            ops = self._checked_operations(batch)
            if ops:
                retry(lambda: self._apply(ops), always, self.give_up, self.backoff,
                      self._failed("redis"))
                self._recovered("redis")
            failures = batch.failures
            if failures:
                retry(lambda: self.dead_letters.send(failures), always,
                      self.give_up, self.backoff, self._failed("kafka"))
                self._recovered("kafka")
        except GaveUp:
            event(log, "gave up writing a batch; it will be re-delivered", logging.WARNING,
                  batch=batch.seq, records=len(batch.items))
            return
        batch.written_at = time.monotonic()  # a durability wait after this covers it
        batch.written = True

    def rewrite(self, batch: Batch) -> None:
        """The batch's index operations again (idempotent), after Redis may have lost them
        (``worker/durable.py``)."""
        self._apply(self._checked_operations(batch))

    def _checked_operations(self, batch: Batch) -> list[tuple[Upsert | Delete, tuple | None]]:
        """The batch's operations with the command of each upsert, after failing the records
        whose element Redis must not get. A failed record may uncover an earlier record of the
        same id (per id, the last good record counts), so this runs until nothing more fails."""
        while True:
            checked: list[tuple[Upsert | Delete, tuple | None]] = []
            refused = False
            for op in index_operations(batch.items, self.model_version):
                if isinstance(op, Delete):
                    checked.append((op, None))
                    continue
                try:
                    checked.append((op, self.index.upsert_command(op.id, op.vector,
                                                                  op.attributes)))
                except TwinstreamError as exc:
                    op.item.fail("write", exc.message)
                    refused = True
                except Exception as exc:  # a record must never take the worker down
                    op.item.fail("write", f"unexpected {type(exc).__name__}: {str(exc)[:200]}")
                    refused = True
            if not refused:
                return checked

    def _apply(self, checked: list[tuple[Upsert | Delete, tuple | None]]) -> None:
        # Never write into a vector set nothing points to: after a FLUSHALL the first VADD
        # would quietly create an orphan (one EXISTS a batch; the liveness check sees the alias).
        info = self.index.info
        if self.index_gone.is_set() or not self.index.client.exists(
                layout.meta_key(info.name, info.version)):
            self.index_gone.set()
            raise IndexVanished(f"index {info.name!r} version {info.version} vanished from "
                                "Redis (alias or metadata gone); holding the batch")
        # Skip what a refused earlier attempt already failed (this may be a retry).
        live = [(op, command) for op, command in checked if op.item.failure is None]
        upserts = [(op, command) for op, command in live if isinstance(op, Upsert)]
        deletes = [op.id for op, _ in live if isinstance(op, Delete)]
        # Thumbnail first: an element is never visible without its picture.
        self.index.put_thumbnails({op.id: op.thumbnail for op, _ in upserts if op.thumbnail})
        outcomes = self.index.run_each([command for _, command in upserts], "upsert")
        refused = [op for (op, _), error in zip(upserts, outcomes, strict=True) if error]
        for (op, _), error in zip(upserts, outcomes, strict=True):
            if error is not None:
                op.item.fail("write", f"Redis refused the element: {error.message}")
        self.index.delete_thumbnails([op.id for op in refused if op.thumbnail])
        self.index.delete(deletes)
        # A deleted reference image stops counting for its identity (prototype recomputed).
        Identities(self.index).forget(deletes)

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
