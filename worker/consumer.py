"""The worker: read image records, embed them in micro-batches, write them to Redis, commit.

    reader (this thread: poll, micro-batch, commit)
      -> decoder (thread + small pool) -> embedder (thread, one onnxruntime call per batch)
      -> writer (thread: Redis + dead letters, retried) -> back here, committed

At-least-once: a partition's offset is committed only up to the last record of an unbroken run of
records that are in Redis or in the dead-letter topic (``OffsetTracker``). Upserts are idempotent
per id, so a replay after a crash leaves the index as if each image had been processed once.

Bounded: at most ``worker.max_in_flight`` batches between polling and committing; when they are
all busy (Redis down, say) the partitions are paused and polling goes on only to stay in the
group. SIGTERM/SIGINT: stop polling, write what is in flight, commit, leave the group, exit; a
second signal gives up on unwritten batches at once (they are not committed, so re-delivered).

Known limit: when a rebalance happens while Redis is down, a batch this worker could not write in
time may still be written after the partition moved; for an id whose image and tombstone then
race, the last write wins.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from index import layout
from index.store import VectorIndex, connect
from twinstream.errors import IndexMismatchError, InternalError, ServiceUnavailable
from twinstream.metrics import MetricsServer
from twinstream.modelcard import ModelCard
from twinstream.preprocess import set_pixel_limit
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from worker.batch import Batch, Item
from worker.decoder import Decoder
from worker.dlq import DeadLetterSender
from worker.durable import Confirmer, Durable, aof_enabled, resolve_level
from worker.embedder import Embedder
from worker.health import HEALTHY_RUN_S, Health
from worker.heartbeat import Heartbeat, heartbeat_key
from worker.kafka_io import ensure_topics, make_consumer
from worker.logs import event
from worker.membership import is_leader
from worker.metrics import WorkerMetrics
from worker.pipeline import Pipeline
from worker.publish import Publisher
from worker.reader import Reader
from worker.writer import Writer

log = logging.getLogger("twinstream.worker")


class PipelineFailed(InternalError):
    """A pipeline step raised: a bug, reported as such; the batch is not committed."""


@dataclass
class WorkerStats:
    records: int = 0
    indexed: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"decode": 0.0, "embed": 0.0, "write": 0.0})

    def add(self, batch: Batch) -> None:
        self.batches += 1
        for item in batch.items:
            self.records += 1
            if item.failure is not None:
                self.dead_lettered += 1
            elif item.is_tombstone:
                self.deleted += 1
            else:
                self.indexed += 1
        for step, s in batch.seconds.items():
            self.seconds[step] = self.seconds.get(step, 0.0) + s

    def to_dict(self) -> dict:
        return {"records": self.records, "indexed": self.indexed, "deleted": self.deleted,
                "dead_lettered": self.dead_lettered, "batches": self.batches,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def open_index(client, settings: Settings, card: ModelCard, reindex: bool) -> VectorIndex:
    """The index version of ``card``'s model, after the model-version guard.

    A worker writes only into the live version of its index; a re-index worker writes into its
    own model's version while another one is live (``twinstream reindex``).
    """
    name = settings.redis.index
    live = VectorIndex.live_version(client, name)
    if live is not None and live != card.version and not reindex:
        raise IndexMismatchError(
            f"index {name!r} is live on model version {live}, but this worker's model is "
            f"{card.version}: run the worker with the model that built the index, or re-embed "
            f"with 'twinstream reindex --model NEW.onnx' and then "
            f"'twinstream index promote {card.version}'")
    return VectorIndex.for_settings(client, settings.redis, card)


def preflight(settings: Settings, reindex: bool = False) -> ModelCard:
    """Everything a worker needs, checked once with clear errors (used before forking a pool)."""
    encoder = Encoder(settings.model.path, threads=1)
    open_index(connect(settings.redis.url), settings, encoder.card, reindex)
    ensure_topics(settings.kafka)
    return encoder.card


# Longest the reader waits for a batch to finish when the pipeline is full (see _loop). Well
# within every bound that needs the loop's attention: stall and shutdown timeouts, the poll
# interval that keeps group membership.
FULL_PIPELINE_WAIT_S = 0.5

# A pool child started again after this many crashes in a row reports a crash loop until it has
# run as long as the pool (worker.pool) waits before it forgets the crashes.
CRASH_LOOP_CRASHES = 2


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None, *,
                 reindex: bool = False, crashes: int = 0, last_exit_code: int | None = None):
        self.settings = settings
        cfg = settings.worker
        self.worker_id = worker_id or default_worker_id()
        self.reindex = reindex
        self.health = Health()
        if crashes >= CRASH_LOOP_CRASHES:
            self.health.failing("restarts", f"started again after {crashes} crashes in a row "
                                f"(last exit code {last_exit_code}): a crash loop; see the log")
        self.metrics = WorkerMetrics()
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self.give_up = threading.Event()
        self.index_gone = threading.Event()  # see _check_still_live
        self.superseded_by: str | None = None
        self.started_at = time.time()
        set_pixel_limit(cfg.max_image_pixels)

        self.encoder = Encoder.from_settings(settings)
        self.index = open_index(connect(settings.redis.url), settings, self.encoder.card,
                                reindex)
        ensure_topics(settings.kafka)
        self.dlq = Publisher(settings.kafka, client_id="twinstream-dlq", linger_ms=0,
                             create_topics=False)
        # A fetch long-polls the broker up to fetch_max_wait_ms when there is nothing new; at
        # Kafka's default (500 ms) that wait, not the work, would dominate latency at low rates.
        self.reader = Reader(make_consumer(settings.kafka,
                                           fetch_max_wait_ms=max(10, min(500, cfg.max_wait_ms))),
                             cfg, self.metrics,
                             on_assignment=lambda: self.heartbeat.beat_soon())
        self.decoder = Decoder(self.encoder.card.preprocessing, cfg)
        writer = Writer(self.index, DeadLetterSender(self.dlq, self.worker_id),
                        self.encoder.version, self.health, self.metrics, self.give_up,
                        index_gone=self.index_gone)
        self.durability = resolve_level(self.index.client, settings.redis)
        self.durable = Durable(self.index, Confirmer(
            self.index.client, self.durability, settings.redis.durability_timeout_ms,
            settings.redis.min_replicas, aof=aof_enabled(self.index.client)),
            writer.rewrite, self.encoder.version, self.health, self.metrics, self.give_up)
        self.pipeline = Pipeline(
            [self.decoder, Embedder(self.encoder), writer, self.durable],
            capacity=cfg.max_in_flight + (cfg.max_awaiting_durability
                                          if self.durability != "none" else 0),
            observe=self.metrics.observe_step)
        self.metrics.track_uncommitted(self.reader.tracker.in_flight,
                                       self.reader.tracker.written_uncommitted)
        self.heartbeat = Heartbeat(self.index.client,
                                   heartbeat_key(settings.kafka.group, self.worker_id),
                                   self.describe, on_beat=self._check_still_live)
        self.metrics_server = (MetricsServer(cfg.metrics_port, self.metrics.registry,
                                             self.health_report)
                               if cfg.metrics_port else None)
        self._seq = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_event.is_set():
            self.give_up.set()  # second signal: do not wait for Redis any longer
        self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Process until stopped (or until nothing arrived for ``idle_exit_s`` seconds)."""
        self.reader.subscribe(self.settings.kafka.topic, before_revoke=self._finish_in_flight)
        self.pipeline.start()
        self.heartbeat.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        event(log, "worker started", topic=self.settings.kafka.topic,
              group=self.settings.kafka.group, index=self.index.info.name,
              version=self.index.info.version, mode="reindex" if self.reindex else "live",
              batch=self.settings.worker.batch)
        clean = False
        unwritten = 0
        try:
            self._loop(idle_exit_s)
            self.health.stopping()
            clean = self._drain(self.settings.worker.shutdown_timeout_s)
            unwritten = self.reader.tracker.in_flight()  # before leaving the group resets it
        finally:
            self._close()
        if self.superseded_by is not None:
            raise IndexMismatchError(
                f"index {self.index.info.name!r} was promoted to model version "
                f"{self.superseded_by}; this worker embeds with {self.encoder.version}: "
                "restart it with the new model")
        if not clean:
            raise ServiceUnavailable(
                f"stopped with {unwritten} records not written (see the warnings above); they "
                "were not committed and will be re-delivered")
        event(log, "worker stopped", **self.stats.to_dict())
        return self.stats

    def _loop(self, idle_exit_s: float | None) -> None:
        reader = self.reader
        while not self.stop_event.is_set():
            self._check_pipeline()
            self._watch()
            self._collect(timeout_s=0.0)
            room = self.pipeline.has_room
            records = reader.poll(room)
            if records:
                self._submit(records)
            elif not room:
                # Wait for the pipeline rather than spin: a finished batch ends the wait at
                # once, so a longer bound only saves the idle rounds (each one polls Kafka and
                # wakes its IO thread) while a slow encoder or a Redis outage holds every batch.
                self._collect(timeout_s=FULL_PIPELINE_WAIT_S)
            elif (idle_exit_s is not None and reader.last_record is not None
                  and not reader.has_pending and self.pipeline.in_flight == 0
                  and time.monotonic() - reader.last_record > idle_exit_s):
                break
            reader.commit()
            reader.report_lag()

    def _watch(self) -> None:
        """Health that no exception reports: a batch that stopped moving, a crash loop over."""
        stalled = self.pipeline.stalled(self.settings.worker.stall_timeout_s)
        if stalled is not None:
            step, seq, seconds = stalled
            if "pipeline" not in self.health.snapshot()["failing"]:
                event(log, "a batch is not moving", logging.ERROR, step=step, batch=seq,
                      seconds=round(seconds))
            self.health.failing("pipeline", f"batch {seq} has been in step {step} for "
                                f"{seconds:.0f} s (TWINSTREAM_WORKER_STALL_TIMEOUT_S)",
                                attempt=False)
        else:
            self.health.ok("pipeline")
        if time.time() - self.started_at > HEALTHY_RUN_S:
            self.health.ok("restarts")
        self.metrics.healthy.set(1 if self.health.healthy else 0)

    def _drain(self, timeout_s: float) -> bool:
        """Write what is in flight and commit it; False if that did not finish in time."""
        if self.reader.has_pending:
            self._submit(self.reader.take_pending())
        deadline = time.monotonic() + timeout_s
        while self.pipeline.in_flight and self.pipeline.error is None:
            if time.monotonic() > deadline or self.give_up.is_set():
                self.give_up.set()
                end = time.monotonic() + 10  # the writer notices within one backoff step
                while self.pipeline.in_flight and time.monotonic() < end:
                    self._collect(timeout_s=0.2)
                break
            self._collect(timeout_s=0.1)
        self.reader.commit(force=True)
        return self.pipeline.in_flight == 0 and self.pipeline.error is None \
            and self.reader.tracker.in_flight() == 0

    def _close(self) -> None:
        self.pipeline.stop(timeout_s=5)
        self.decoder.close()
        self.heartbeat.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        try:
            self.dlq.close()
        finally:
            self.reader.close()

    # --- reading and committing ----------------------------------------------------------------

    def _submit(self, records: list) -> None:
        self._seq += 1
        batch = Batch(self._seq, [Item(r) for r in records],
                      generation=self.reader.tracker.generation)
        self.metrics.batch_size.observe(len(records))
        self.pipeline.submit(batch)
        self.metrics.in_flight.set(self.pipeline.in_flight)

    def _collect(self, timeout_s: float) -> None:
        for batch in self.pipeline.finished(timeout_s):
            if batch.written:
                self.reader.finished(batch)
                self.stats.add(batch)
                self._count(batch)
        self.metrics.in_flight.set(self.pipeline.in_flight)

    def _count(self, batch: Batch) -> None:
        # Counted per batch: a labelled metric's lookup and lock cost microseconds per call.
        outcomes: Counter[str] = Counter()
        for item in batch.items:
            if item.failure is not None:
                outcomes["dead_lettered"] += 1
                self.metrics.dead_letters.labels(item.failure.stage).inc()
                event(log, "dead letter", logging.WARNING, stage=item.failure.stage,
                      reason=item.failure.reason,
                      source=f"{item.record.topic}/{item.record.partition}/"
                             f"{item.record.offset}")
            else:
                outcomes["deleted" if item.is_tombstone else "indexed"] += 1
        for outcome, count in outcomes.items():
            self.metrics.records.labels(outcome).inc(count)

    def _check_pipeline(self) -> None:
        if self.pipeline.error is not None:
            exc = self.pipeline.error
            raise PipelineFailed(f"worker step failed: {type(exc).__name__}: {exc}") from exc

    def _finish_in_flight(self) -> None:
        """Partitions are about to move: let the pipeline write what it holds (bounded), so that
        it is committed now rather than re-done by the next owner."""
        bound = min(self.settings.worker.shutdown_timeout_s,
                    self.settings.kafka.session_timeout_ms / 2000)
        deadline = time.monotonic() + bound
        while self.pipeline.in_flight and time.monotonic() < deadline \
                and self.pipeline.error is None:
            self._collect(timeout_s=0.1)

    # --- reporting -----------------------------------------------------------------------------

    def _unassigned_for_s(self) -> float:
        since = self.reader.unassigned_since
        return 0.0 if since is None else round(time.monotonic() - since, 1)

    def _health(self) -> dict:
        """The health state, with a consumer that owns no partition for too long as failing."""
        unassigned = self._unassigned_for_s()
        if unassigned > self.settings.worker.unassigned_alarm_s:
            self.health.failing("assignment", f"no partition assigned for {unassigned:.0f} s "
                                "(more workers than partitions, or the group does not assign)")
        else:
            self.health.ok("assignment")
        return self.health.snapshot()

    def health_report(self) -> dict:
        return {**self._health(), "worker": self.worker_id,
                "unassigned_for_s": self._unassigned_for_s(),
                "partitions": [tp.partition for tp in self.reader.assigned],
                "in_flight_batches": self.pipeline.in_flight, "records": self.stats.to_dict(),
                "model": {"version": self.encoder.version, **self.encoder.runtime_info()}}

    def describe(self) -> dict:
        """What the heartbeat publishes (``twinstream status`` shows it)."""
        return {"worker": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                "group": self.settings.kafka.group, "topic": self.settings.kafka.topic,
                "index": self.index.info.name, "version": self.index.info.version,
                "provider": self.encoder.provider,
                "mode": "reindex" if self.reindex else "live",
                "partitions": [tp.partition for tp in self.reader.assigned],
                "leader": is_leader(self.reader.consumer), "durability": self.durability,
                "health": self._health(),
                "unassigned_for_s": self._unassigned_for_s(), "records": self.stats.to_dict(),
                "started_at": self.started_at, "seen_at": time.time()}

    def _check_still_live(self) -> None:
        """A promoted index with another model: stop, rather than fill a version nobody reads.
        An index that vanished (alias or metadata gone: FLUSHALL, a restart without
        persistence, a failover to an empty replica): hold writes and report degraded."""
        live = VectorIndex.live_version(self.index.client, self.index.info.name)
        gone = not self.index.client.exists(
            layout.meta_key(self.index.info.name, self.index.info.version)) or (
            live is None and not self.reindex)
        if gone and not self.index_gone.is_set():
            self.index_gone.set()
            event(log, "the index vanished from Redis; holding writes", logging.ERROR,
                  index=self.index.info.name, version=self.index.info.version)
        elif not gone and self.index_gone.is_set():
            self.index_gone.clear()
            self.health.ok("index")
            event(log, "the index is back; writing again", index=self.index.info.name)
        if gone:
            self.health.failing("index", f"index {self.index.info.name!r} version "
                                f"{self.index.info.version} vanished from Redis (alias or "
                                "metadata gone); holding writes, committing nothing")
        if self.reindex:
            return
        if live is not None and live != self.index.info.version and self.superseded_by is None:
            self.superseded_by = live
            event(log, "index promoted to another model version; stopping", logging.ERROR,
                  live=live, mine=self.index.info.version)
            self.stop_event.set()
