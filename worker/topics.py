"""Reading topics and groups from the outside: true end offsets, committed offsets, lag, and
reading a whole topic (for ``dlq list`` and ``status``).

End offsets: tansu (the embedded broker) reports a partition's end as *the last record batch's
base offset + 1*, too low when a producer batched several records; its fetch responses carry the
true high watermark. So for each partition that is not empty we fetch from ``reported end - 1``
(the last batch's first record) and take the high watermark of that fetch (or the last record's
offset + 1). That works even when the last batch cannot be parsed by the client (a hostile
producer's header). On Apache Kafka this gives the same number as the reported one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from twinstream.errors import NotFoundError
from twinstream.settings import KafkaSettings
from worker.kafka_io import make_admin, make_consumer

FETCH_TIMEOUT_S = 10.0


def reader(settings: KafkaSettings, **overrides) -> KafkaConsumer:
    """A consumer outside any group (it assigns partitions itself and never commits)."""
    return make_consumer(settings, group_id=None, client_id="twinstream-reader", **overrides)


def partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise NotFoundError(f"topic {topic!r} does not exist on the broker")
    return [TopicPartition(topic, p) for p in sorted(ids)]


def end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The true end offset (offset of the next record to be written) of each partition."""
    ends = dict(consumer.end_offsets(tps))
    open_tps = [tp for tp in tps if ends.get(tp, 0) > 0]
    if not open_tps:
        return ends
    consumer.assign(open_tps)
    for tp in open_tps:
        consumer.seek(tp, ends[tp] - 1)
    waiting = set(open_tps)
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        try:
            polled = consumer.poll(timeout_ms=200)
        except (KafkaError, ValueError, IndexError):  # an unreadable record: the fetch still
            polled = {}                                # brought the high watermark
        for tp, records in polled.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        for tp in list(waiting):
            high = consumer.highwater(tp)
            if high is not None:
                ends[tp] = max(ends[tp], high)
            if high is not None or polled.get(tp):
                waiting.discard(tp)
                consumer.pause(tp)  # one fetch per partition is enough
    consumer.assign([])
    return ends


def read_all(settings: KafkaSettings, topic: str, start: dict[TopicPartition, int] | None = None
             ) -> Iterator:
    """Every record of ``topic`` from ``start`` (default: the beginning) to its current end."""
    consumer = reader(settings)
    try:
        tps = partitions(consumer, topic)
        ends = end_offsets(consumer, tps)
        todo = {tp: ends[tp] for tp in tps if ends[tp] > (start or {}).get(tp, 0)}
        if not todo:
            return
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, (start or {}).get(tp, 0))
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while todo and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200)
            if polled:
                deadline = time.monotonic() + FETCH_TIMEOUT_S
            for tp, records in sorted(polled.items()):
                for record in records:
                    if tp in todo and record.offset < todo[tp]:
                        yield record
                if records and records[-1].offset + 1 >= todo.get(tp, 0):
                    todo.pop(tp, None)
                    consumer.pause(tp)
    finally:
        consumer.close(autocommit=False)


def group_offsets(admin: KafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    """A group's committed offsets ({} for a group that never committed)."""
    try:
        found = admin.list_group_offsets({group: None})
    except KafkaError:
        return {}
    return {tp: meta.offset for tp, meta in (found.get(group) or {}).items()
            if meta is not None and meta.offset >= 0}


def lag(settings: KafkaSettings, group: str, topic: str | None = None) -> dict:
    """Per partition: end offset, the group's committed offset and the lag between them."""
    topic = topic or settings.topic
    consumer = reader(settings)
    admin = make_admin(settings)
    try:
        tps = partitions(consumer, topic)
        ends = end_offsets(consumer, tps)
        committed = group_offsets(admin, group)
    finally:
        consumer.close(autocommit=False)
        admin.close()
    rows = []
    for tp in tps:
        position = committed.get(tp)
        rows.append({"partition": tp.partition, "end": ends[tp], "committed": position,
                     "lag": ends[tp] - (position or 0)})
    return {"topic": topic, "group": group, "partitions": rows,
            "total": sum(ends.values()), "lag": sum(r["lag"] for r in rows)}
