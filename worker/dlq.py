"""Dead letters: records that cannot be embedded go to ``<topic>.dlq`` unchanged (key, value,
headers) plus ``error.*`` headers saying why, so that nothing is ever silently dropped and a
fixed record can be replayed as it was.

Headers added: ``error.reason`` (one line), ``error.stage`` (parse, fetch, decode, embed, write),
``error.worker`` (worker id), ``error.source`` (topic/partition/offset), ``error.time`` (ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kafka import TopicPartition
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from twinstream.errors import ServiceUnavailable
from twinstream.settings import KafkaSettings
from worker.batch import Item
from worker.kafka_io import make_consumer
from worker.publish import Publisher
from worker.topics import end_offsets, partitions, read_all

ERROR_PREFIX = "error."
VALUE_DROPPED = "error.value-dropped"
MAX_REASON_BYTES = 1000
WHOLE, WITHOUT_VALUE, ERRORS_ONLY = 0, 1, 2  # how much of a record its dead letter carries


# Refusals that belong to one letter (too large, a header the broker rejects): that letter is
# sent again without the original payload rather than retried for ever.
LETTER_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                   CorruptRecordError)


def _header_name(name) -> str:
    """A header name the producer can write: one that is not valid Unicode is kept escaped."""
    text = name if isinstance(name, str) else bytes(name).decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def dead_letter_headers(record, stage: str, reason: str, worker_id: str) -> list:
    original = [(_header_name(k), v) for k, v in (record.headers or [])
                if not str(k).startswith(ERROR_PREFIX)]
    return [
        *original,
        ("error.reason", reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        ("error.stage", stage.encode()),
        ("error.worker", worker_id.encode("utf-8", "replace")),
        ("error.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("error.time", str(int(time.time() * 1000)).encode()),
    ]


class DeadLetterSender:
    """Sends the failed items of a batch and waits until the broker has them all."""

    def __init__(self, publisher: Publisher, worker_id: str):
        self.publisher = publisher
        self.topic = publisher.settings.dlq_topic
        self.worker_id = worker_id
        self._sent: set[int] = set()  # id() of items already acknowledged, across retries

    def send(self, items: Sequence[Item]) -> int:
        """Send what was not yet acknowledged; raises ``KafkaError`` (retryable) on failure."""
        pending = []
        for item in items:
            if id(item) in self._sent:
                continue
            pending.append((item, self._send(item, WHOLE)))
        self.publisher.flush()
        for item, future in pending:
            self._deliver(item, future)
            self._sent.add(id(item))
        for item in items:
            self._sent.discard(id(item))  # the batch is done with; ids may be reused later
        return len(pending)

    def _deliver(self, item: Item, future) -> None:
        """Wait for a letter; one the broker refuses as it is goes again with less in it.
        Raises ``KafkaError`` (retryable) when even the smallest letter does not go."""
        for lighter in (WITHOUT_VALUE, ERRORS_ONLY):
            try:
                self.publisher.wait(future)
                return
            except LETTER_REFUSALS:
                future = self._send(item, lighter)
        self.publisher.wait(future)

    def _send(self, item: Item, level: int):
        """Send one letter at ``level``: the whole record plus the error headers; without its
        value; or only its key and the error headers. A letter without its value carries
        ``error.value-dropped``, so that a replay skips it. A record the client could not read
        (``worker.reader.UnreadableRecord``) has nothing but its place to send."""
        record, failure = item.record, item.failure
        headers = dead_letter_headers(record, failure.stage, failure.reason, self.worker_id)
        unreadable = getattr(record, "reason", None) is not None
        level = max(level, ERRORS_ONLY) if unreadable else level
        if level == WHOLE:
            value = record.value
        else:
            value = b""
            dropped = ("the record could not be read" if unreadable
                       else f"{len(record.value or b'')} bytes")
            if level == ERRORS_ONLY:
                headers = [h for h in headers if h[0].startswith(ERROR_PREFIX)]
            headers = [*headers, (VALUE_DROPPED, dropped.encode())]
        try:
            return self.publisher.send(self.topic, record.key, value, headers)
        except LETTER_REFUSALS:
            if level == ERRORS_ONLY:
                raise
            return self._send(item, level + 1)


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    id: str | None
    stage: str
    reason: str
    worker: str
    source: str
    size: int
    time_ms: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _headers(record) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (record.headers or [])}


def as_dead_letter(record) -> DeadLetter:
    h = _headers(record)
    key = record.key.decode("utf-8", "replace") if record.key else None
    return DeadLetter(record.partition, record.offset, key, h.get("error.stage", "?"),
                      h.get("error.reason", "?"), h.get("error.worker", "?"),
                      h.get("error.source", "?"), len(record.value or b""),
                      int(h.get("error.time") or 0))


def list_dead_letters(settings: KafkaSettings) -> list[DeadLetter]:
    return [as_dead_letter(r) for r in read_all(settings, settings.dlq_topic)]


def replay_group(settings: KafkaSettings) -> str:
    """The group whose committed offsets mark how far the dead letters were replayed."""
    return f"{settings.group}.dlq-replay"


@dataclass
class ReplaySummary:
    replayed: int = 0
    skipped: int = 0  # letters whose value was too large to keep
    ids: list[str] | None = None

    def to_dict(self) -> dict:
        return {"replayed": self.replayed, "skipped": self.skipped}


def replay(settings: KafkaSettings, ids: Iterable[str] = (), dry_run: bool = False
           ) -> ReplaySummary:
    """Publish dead letters to the images topic again, without their ``error.*`` headers.

    Without ``ids``: every letter not replayed before, then the replay position moves past them.
    With ``ids``: the letters of those ids, wherever they are, and the position stays.
    """
    wanted = set(ids)
    group = replay_group(settings)
    consumer = make_consumer(settings, group_id=group, client_id="twinstream-dlq-replay")
    try:
        tps = partitions(consumer, settings.dlq_topic)
        start = {} if wanted else {tp: _committed(consumer, tp) for tp in tps}
        ends = end_offsets(consumer, tps)
        summary = ReplaySummary(ids=[])
        publisher = None if dry_run else Publisher(settings, client_id="twinstream-replay")
        try:
            for record in read_all(settings, settings.dlq_topic, start):
                key = record.key.decode("utf-8", "replace") if record.key else ""
                if wanted and key not in wanted:
                    continue
                headers = [(k, v) for k, v in (record.headers or [])
                           if not k.startswith(ERROR_PREFIX)]
                if any(k == VALUE_DROPPED for k, _ in record.headers or []):
                    summary.skipped += 1
                    continue
                if publisher is not None:
                    publisher.send(settings.topic, record.key, record.value, headers)
                summary.replayed += 1
                summary.ids.append(key)
            if publisher is not None:
                publisher.flush()
        finally:
            if publisher is not None:
                publisher.close()
        if not wanted and not dry_run:
            consumer.assign(tps)
            consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        return summary
    except KafkaError as exc:
        raise ServiceUnavailable(f"replaying dead letters failed: {exc}") from exc
    finally:
        consumer.close(autocommit=False)


def _committed(consumer, tp: TopicPartition) -> int:
    try:
        offset = consumer.committed(tp)
    except KafkaError:
        return 0
    return offset or 0
