"""The worker: consume image records, embed them in batches, upsert into Redis, then commit.

At-least-once: a partition's offset is committed only after every record up to it is in the index
(or, for what cannot be embedded, in the dead-letter topic). Upserts are idempotent per id, so a
replay after a crash leaves the index as if each image had been processed once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from PIL import Image

from index.store import VectorIndex, connect
from twinstream.errors import ImageDecodeError
from twinstream.messages import ImageMessage, MessageError
from twinstream.preprocess import decode_image
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from twinstream.thumbnails import make_thumbnail
from worker.kafka_io import ensure_topics, make_consumer, make_producer

log = logging.getLogger("twinstream.worker")


@dataclass
class WorkerStats:
    upserted: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"embed": 0.0, "write": 0.0})

    def to_dict(self) -> dict:
        return {"upserted": self.upserted, "deleted": self.deleted,
                "dead_lettered": self.dead_lettered, "batches": self.batches,
                "seconds": self.seconds}


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.encoder = Encoder(settings.model.path, threads=settings.model.threads,
                               max_pixels=settings.worker.max_image_pixels)
        self.index = VectorIndex.for_model(connect(settings.redis.url), settings.redis.index,
                                           self.encoder.card, settings.redis.quant)
        ensure_topics(settings.kafka)
        self.consumer = make_consumer(settings.kafka)
        self.consumer.subscribe([settings.kafka.topic])
        self.dlq = make_producer(settings.kafka)
        self.stop_event = threading.Event()
        self.stats = WorkerStats()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Process until stopped (or until nothing arrived for ``idle_exit_s`` seconds)."""
        cfg = self.settings.worker
        last_record = time.monotonic()
        try:
            while not self.stop_event.is_set():
                polled = self.consumer.poll(timeout_ms=max(cfg.max_wait_ms, 1),
                                            max_records=cfg.batch)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    last_record = time.monotonic()
                    self.process(records)
                elif idle_exit_s is not None and time.monotonic() - last_record > idle_exit_s:
                    break
        finally:
            self.close()
        return self.stats

    def process(self, records: list) -> None:
        """Embed and write one batch, dead-letter what cannot be embedded, then commit."""
        to_embed: list[tuple[object, ImageMessage]] = []
        deletes: list[str] = []
        for record in records:
            try:
                msg = ImageMessage.from_record(record.key, record.value, record.headers)
            except MessageError as exc:
                self.dead_letter(record, str(exc), "decode")
                continue
            if msg.is_tombstone:
                deletes.append(msg.id)
            else:
                to_embed.append((record, msg))

        started = time.perf_counter()
        decoded: list[tuple[ImageMessage, Image.Image]] = []
        for record, msg in to_embed:
            try:
                decoded.append((msg, decode_image(msg.data or b"", self.encoder.max_pixels)))
            except ImageDecodeError as exc:
                self.dead_letter(record, exc.message, "decode")
        vectors = self.encoder.embed_images([img for _, img in decoded])
        thumbnails = {msg.id: make_thumbnail(img) for msg, img in decoded}
        self.stats.seconds["embed"] += time.perf_counter() - started

        started = time.perf_counter()
        items = []
        for vector, (msg, _) in zip(vectors, decoded, strict=True):
            attributes = {**msg.attributes, "model_version": self.encoder.version,
                          "ingested_at": round(time.time(), 3)}
            if msg.uri:
                attributes.setdefault("uri", msg.uri)
            items.append((msg.id, vector, attributes))
        self.index.put_thumbnails(thumbnails)
        self.stats.upserted += self.index.upsert(items)
        self.stats.deleted += len(deletes)
        self.index.delete(deletes)
        self.dlq.flush()
        self.stats.seconds["write"] += time.perf_counter() - started
        self.stats.batches += 1
        self.commit(records)

    def dead_letter(self, record, reason: str, stage: str) -> None:
        headers = [
            *(record.headers or []),
            ("error.reason", reason.encode("utf-8", "replace")[:1000]),
            ("error.stage", stage.encode()),
            ("error.worker", self.worker_id.encode()),
            ("error.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        self.dlq.send(self.settings.kafka.dlq_topic, key=record.key, value=record.value,
                      headers=headers)
        self.stats.dead_lettered += 1
        log.warning("dead letter %s/%s@%s: %s", record.topic, record.partition, record.offset,
                    reason)

    def commit(self, records: list) -> None:
        offsets: dict = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, -1), record.offset)
        try:
            self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1)
                                  for (t, p), o in offsets.items()})
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner replays them, and upserts are
            # idempotent, so nothing is lost and nothing is doubled.
            log.warning("commit failed (%s); records will be re-delivered", exc)

    def close(self) -> None:
        try:
            self.dlq.flush(timeout=10)
            self.dlq.close(timeout=10)
        finally:
            self.consumer.close()  # leaves the group so partitions move at once
