"""Fuzz the stream itself (issue 11): arbitrary records through the real broker to one real
worker. Whatever a producer sends, the worker never stops, every record ends in the index or in
the dead-letter topic, the committed offsets reach the end of the topic and health ends ``ok``.

Hypothesis draws batches of records (keys, values, headers, attribute JSON that is deep, NaN,
surrogate-laden or huge, uris into and out of an allowed folder, FIFOs, tombstones); each example
is published with its own producer (some in one producer batch, some record by record), and the
invariants are checked over everything published so far.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

from tests.imagegen import encode, gradient
from tests.integration.test_poison_pills import UnencodableName
from tests.integration.worker_support import (
    ThreadWorker,
    committed,
    fast,
    index_of,
    topic_records,
    wait_until,
)
from worker.kafka_io import ensure_topics, make_producer
from worker.topics import end_offsets, partitions, reader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNGS = [encode(gradient(size=12 + i, seed=i)) for i in range(4)]


@dataclass(frozen=True)
class Published:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def attribute_json() -> st.SearchStrategy[bytes]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    documents = st.recursive(leaves, lambda c: st.lists(c, max_size=4) |
                             st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=20)
    return st.one_of(
        st.dictionaries(st.text(max_size=8), documents, max_size=5).map(
            lambda d: _dumps(d).encode("utf-8", "surrogatepass")),
        st.sampled_from([b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e999}',
                         b'{"label": "\\udcff"}', b'{"\\ud800": 1}', b'{"label": "a\\u0007"}',
                         b'{"a":' * 40 + b"1" + b"}" * 40, b'{"a":' * 2000 + b"1" + b"}" * 2000,
                         b'{"big": "' + b"x" * 20_000 + b'"}', b"[]", b"null", b"{", b""]),
        st.binary(max_size=40),
    )


def _dumps(value) -> str:
    import json

    return json.dumps(value)  # NaN and Infinity come out as the bare words, as a producer might


def header_lists(root: str) -> st.SearchStrategy[list]:
    uri = st.sampled_from([f"{root}/good.png", f"{root}/fifo.png", f"{root}/text.png",
                           f"{root}/missing.png", f"{root}", "/etc/hostname", "relative.png",
                           f"file://{root}/good.png", "http://x/y.png", f"{root}/../x.png"])
    header = st.one_of(
        st.tuples(st.just("attributes"), attribute_json()),
        st.tuples(st.just("uri"), uri.map(str.encode) | st.binary(max_size=20)),
        st.tuples(st.just("produced-at"), st.sampled_from([b"1", b"-5", b"x", b"9" * 40])),
        st.tuples(st.just("content-type"), st.binary(max_size=20)),
        st.tuples(st.text(max_size=6).filter(_encodable), st.binary(max_size=10)),
        st.tuples(st.just(UnencodableName("weird")), st.just(b"1")),
    )
    return st.lists(header, max_size=4)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def records() -> st.SearchStrategy[tuple]:
    key = st.one_of(st.none(), st.sampled_from([b"id-a", b"id-b", b"id-c", b"id/\xc3\xa9"]),
                    st.binary(min_size=1, max_size=12), st.just(b"x" * 600),
                    st.just(b"tab\tid"))
    value = st.one_of(st.none(), st.just(b""), st.sampled_from(PNGS),
                      st.sampled_from(PNGS).map(lambda b: b[: len(b) // 2]),
                      st.binary(max_size=64))
    return st.tuples(key, value)


# FUZZ_EXAMPLES=N: a longer, random (not derandomized) run by hand.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 6)), deadline=None,
                database=None, derandomize=not os.environ.get("FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def stream(model_settings, tmp_path):
    (tmp_path / "good.png").write_bytes(PNGS[0])
    (tmp_path / "text.png").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    os.mkfifo(tmp_path / "fifo.png")
    s = fast(model_settings, uri_roots=str(tmp_path), max_image_bytes=50_000, batch=16)
    ensure_topics(s.kafka)
    published: list[Published] = []
    with ThreadWorker(s) as running:
        yield s, running, published, str(tmp_path)
    assert running.error is None


@FUZZ
@given(data=st.data())
def test_any_records_end_in_the_index_or_the_dead_letter_topic(stream, data):
    s, running, published, root = stream
    batch = data.draw(st.lists(st.tuples(records(), header_lists(root)), min_size=10,
                               max_size=60))
    one_producer_batch = data.draw(st.booleans())
    producer = make_producer(s.kafka, linger_ms=50 if one_producer_batch else 0)
    try:
        futures = []
        for (key, value), headers in batch:
            try:
                futures.append((key, value, producer.send(s.kafka.topic, key=key, value=value,
                                                          headers=headers)))
            except Exception:  # the client refused to send it: nothing was published
                continue
            if not one_producer_batch:
                producer.flush(10)
        producer.flush(30)
        for key, value, future in futures:
            try:
                meta = future.get(timeout=30)
            except Exception:  # refused by the broker (too large...): not published
                continue
            published.append(Published(key, value, meta.partition, meta.offset))
    finally:
        producer.close(10)

    ends = {}
    for rec in published:  # the true ends: every record of this topic is one of ours
        tp = TopicPartition(s.kafka.topic, rec.partition)
        ends[tp] = max(ends.get(tp, 0), rec.offset + 1)

    def at_end() -> bool:
        done = committed(s)
        return all(done.get(tp) == end for tp, end in ends.items())

    wait_until(lambda: at_end() or running.error, 90, "offsets at the end of the topic")
    assert running.error is None and running.thread.is_alive()
    assert at_end()  # every record, good or bad, was accounted for, and nothing beyond
    assert _ends(s) == ends  # the topic's end as `twinstream status` reads it agrees

    letters = topic_records(s, s.kafka.dlq_topic)
    dead = set()
    for letter in letters:
        h = dict(letter.headers)
        assert h["error.reason"] and h["error.stage"].decode() in (
            "parse", "fetch", "decode", "embed", "write")
        assert b"root:x" not in h["error.reason"]  # never the contents of a file
        dead.add(h["error.source"].decode())
    expected = _expected_index(s, published, dead)
    index = index_of(s) if any(expected.values()) or _index_exists(s) else None
    for image_id, present in expected.items():
        assert index is not None or not present
        if index is not None:
            assert index.exists(image_id) == present, (image_id, present)
    assert running.worker.health.snapshot()["status"] == "ok"


def _ends(s) -> dict:
    consumer = reader(s.kafka)
    try:
        tps = partitions(consumer, s.kafka.topic)
        return {tp: end for tp, end in end_offsets(consumer, tps).items() if end}
    finally:
        consumer.close()


def _index_exists(s) -> bool:
    from index.store import VectorIndex, connect

    return VectorIndex.live_version(connect(s.redis.url), s.redis.index) is not None


def _expected_index(s, published: list[Published], dead: set[str]) -> dict[str, bool]:
    """Per id, whether it must be in the index: the last record of the id that is not a dead
    letter decides (an image puts it there, a tombstone removes it)."""
    state: dict[str, bool] = {}
    for rec in sorted(published, key=lambda r: (r.partition, r.offset)):
        if f"{s.kafka.topic}/{rec.partition}/{rec.offset}" in dead:
            continue
        assert rec.key is not None, f"a record without a key was not dead-lettered: {rec}"
        image_id = rec.key.decode("utf-8")
        state[image_id] = rec.value is not None
    return state
