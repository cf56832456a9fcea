"""The five reliability tests of the streaming workers (issue 6), on the real broker and Redis 8.

Each is bounded in time; small images and the tiny session model keep them fast.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from dataclasses import replace

import pytest

from index.store import connect
from tests.imagegen import encode, gradient, hostile, unusual_but_valid
from tests.integration.worker_support import (
    Publisher,
    ThreadWorker,
    committed,
    count,
    fast,
    good_image,
    image_record,
    index_of,
    publish,
    topic_records,
    wait_until,
    worker_process,
)
from twinstream.messages import content_id
from twinstream.stack import free_port, redis_process
from worker.batch import STAGES
from worker.heartbeat import list_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def hostile_records(tmp_path) -> list[tuple]:
    """Thirty records that must become dead letters, each for its own reason."""
    bad = dict(hostile())  # truncated PNG/JPEG, zero bytes, random bytes, text, bomb
    png = encode(gradient(seed=3))
    bad.update({f"random_{i}": os.urandom(512 + 97 * i) for i in range(4)})
    bad.update({f"truncated_png_{n}": png[:n] for n in (8, 40, len(png) - 30)})
    bad.update({"text_csv": b"id,label\n1,cat\n" * 30, "text_json": b'{"not": "an image"}'})
    bad.update({"gif_header_only": b"GIF89a", "jpeg_soi_only": b"\xff\xd8\xff",
                "webp_header_only": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                "oversized": encode(gradient(size=500, seed=4))})  # above max_image_bytes
    records = [image_record(data, f"hostile-{name}") for name, data in bad.items()]
    folder = tmp_path / "folder.png"
    folder.mkdir()
    by_reference = {"missing_uri": str(tmp_path / "no-such-file.png"),
                    "uri_outside_roots": "/etc/hostname",
                    "uri_is_a_folder": str(folder),
                    "uri_not_local": "http://example.com/cat.png"}
    for name, uri in by_reference.items():
        key, _, headers = image_record(b"", f"hostile-{name}")
        records.append((key, b"", [*headers, ("uri", uri.encode())]))
    _, value, headers = image_record(encode(gradient(seed=5)))
    records += [
        (None, value, headers),  # no key: no id
        (b"\xff\xfe\xfd", value, headers),  # key not UTF-8
        (b"x" * 600, value, headers),  # key too long
        (b"tab\tid", value, headers),  # control character in the id
        (b"hostile-attrs-not-json", value, [("attributes", b"{label: cat")]),
        (b"hostile-attrs-a-list", value, [("attributes", b"[1, 2]")]),
        (b"hostile-produced-at", value, [("produced-at", b"yesterday")]),
    ]
    assert len(records) == 30
    return records


def test_1000_images_with_30_hostile_970_indexed_30_dead_letters(model_settings, tmp_path):
    s = fast(model_settings, batch=32, max_image_bytes=500_000, uri_roots=str(tmp_path))
    valid = list(unusual_but_valid().values())  # 16-bit, CMYK, palette, LA, animated, EXIF...
    good = valid + [good_image(i) for i in range(970 - len(valid))]
    good_ids = {content_id(data) for data in good}
    assert len(good_ids) == 970
    bad = hostile_records(tmp_path)
    records = [image_record(data) for data in good] + bad
    records = records[::2] + records[1::2]  # hostile records spread through the stream
    publish(s, records)

    with ThreadWorker(s) as running:
        wait_until(lambda: running.worker.stats.records >= 1000, 120, "1000 records handled")
        assert running.thread.is_alive() and running.error is None  # never stopped
        assert running.worker.health.snapshot()["status"] == "ok"
    assert running.error is None

    index = index_of(s)
    assert index.count() == 970
    assert all(index.exists(i) for i in good_ids)
    letters = topic_records(s, s.kafka.dlq_topic)
    assert len(letters) == 30
    for letter in letters:
        h = dict(letter.headers)
        assert h["error.stage"].decode() in STAGES
        assert len(h["error.reason"]) > 10 and h["error.worker"]
    assert {r.key for r in letters} == {key for key, _, _ in bad}
    by_key = {r.key: dict(r.headers) for r in letters}
    assert b"does not exist" in by_key[b"hostile-missing_uri"]["error.reason"]
    assert b"decompression bomb" in by_key[b"hostile-decompression_bomb"]["error.reason"]
    assert b"above the limit" in by_key[b"hostile-oversized"]["error.reason"]
    assert by_key[b"hostile-attrs-not-json"]["error.stage"] == b"parse"
    # The dead letter keeps the original record: value and headers as they were.
    original = {key: value for key, value, _ in bad}
    assert all(r.value == original[r.key] for r in letters if r.key in original)
    assert sum(committed(s).values()) == 1000


def test_sigkill_one_of_two_workers_loses_nothing(model_settings):
    s = fast(model_settings)
    publisher = Publisher(s, count=500, rate_per_s=50)
    publisher.start()
    a, b = worker_process(s), worker_process(s)
    client = connect(s.redis.url)
    try:
        both = wait_until(lambda: [w for w in list_workers(client, s.kafka.group)
                                   if w["partitions"]], 60, "both workers own partitions")
        wait_until(lambda: len([w for w in list_workers(client, s.kafka.group)
                                if w["partitions"]]) == 2, 30, "two workers with partitions")
        wait_until(lambda: count(s) >= 50, 60, "records flowing")
        victim, survivor = (a, b) if both[0]["pid"] == a.pid else (b, a)
        os.killpg(victim.pid, signal.SIGKILL)  # a crash: no drain, no commit, no goodbye
        victim.wait(10)
        publisher.join(60)
        assert publisher.error is None
        wait_until(lambda: count(s) >= 500, 90, "all 500 images indexed")
        index = index_of(s)
        assert all(index.exists(i) for i in publisher.ids)
        assert survivor.poll() is None  # the survivor kept going...
        owners = wait_until(lambda: [w for w in list_workers(client, s.kafka.group)
                                     if len(w["partitions"]) == s.kafka.partitions], 30,
                            "the survivor owning every partition")
        assert owners[0]["pid"] == survivor.pid  # ...and took over the dead one's partitions
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    assert survivor.returncode == 0, survivor.stderr.read()


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded, with the same JSON body
        return json.loads(exc.read())


def test_redis_down_10s_mid_stream_nothing_lost_nothing_committed_early(model_settings,
                                                                        tmp_path):
    redis = redis_process(tmp_path, appendonly=True).start()  # our own: we stop it
    s = replace(model_settings, redis=replace(model_settings.redis,
                                              url=f"redis://127.0.0.1:{redis.port}/0"))
    port = free_port()
    s = fast(s, metrics_port=port)
    publisher = Publisher(s, count=600, rate_per_s=40)
    publisher.start()
    proc = worker_process(s)
    try:
        wait_until(lambda: count(s) >= 100, 60, "100 images indexed before the outage")
        # Commits follow Redis's fsync confirmation (WAITAOF, up to a second): wait for some, so
        # that the check after the restart has committed records to look at.
        wait_until(lambda: sum(committed(s).values()) >= 50, 30, "records committed")
        redis.stop()
        time.sleep(1.5)  # a commit of the batch written just before the stop may still land
        before = committed(s)
        health = wait_until(lambda: (h := _health(port))["status"] == "degraded" and h, 10,
                            "the worker reporting Redis as failing")
        assert "redis" in health["failing"]
        time.sleep(8.5)
        during = committed(s)
        assert during == before  # nothing was written, so nothing was committed
        assert proc.poll() is None  # the worker waits, it does not die

        redis.start()
        # Every record below the offsets committed during the outage was written before it (and
        # persisted by AOF): check at once, before the worker has written anything new.
        index = index_of(s)
        below = [r.key.decode() for r in topic_records(s)
                 if r.offset < during.get(_tp(r), 0)]
        assert below and all(index.exists(i) for i in below)

        publisher.join(60)
        assert publisher.error is None
        wait_until(lambda: count(s) >= 600, 90, "all 600 images indexed after the restart")
        assert all(index.exists(i) for i in publisher.ids)
        assert proc.poll() is None  # recovered by itself, same process
        wait_until(lambda: _health(port)["status"] == "ok", 10, "health back to ok")
        wait_until(lambda: sum(committed(s).values()) == 600, 10, "everything committed")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'twinstream_worker_retries_total{target="redis"}' in metrics
        assert "twinstream_worker_embed_seconds_bucket" in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        redis.stop()
    assert proc.returncode == 0, proc.stderr.read()


def _tp(record):
    from kafka import TopicPartition

    return TopicPartition(record.topic, record.partition)


def test_tombstone_removes_and_identical_reingest_changes_nothing(model_settings):
    from worker.ingest import delete_ids

    s = fast(model_settings)
    images = [good_image(i) for i in range(20)]
    ids = [content_id(d) for d in images]
    publish(s, [image_record(d, label="x") for d in images])
    with ThreadWorker(s) as running:
        wait_until(lambda: count(s) == 20, 60, "20 images indexed")
        index = index_of(s)
        gone, kept = ids[:5], ids[5:]
        delete_ids(s.kafka, gone)
        wait_until(lambda: count(s) == 15, 30, "5 ids deleted")
        assert not any(index.exists(i) for i in gone)
        assert all(index.thumbnail(i) is None for i in gone)

        def snapshot() -> dict:
            client = index.client
            return {i: (client.execute_command("VEMB", index.vset, i, "RAW"),
                        client.execute_command("VGETATTR", index.vset, i),
                        index.thumbnail(i)) for i in kept}

        before = snapshot()
        handled = running.worker.stats.records
        publish(s, [image_record(d, label="x") for d in images[5:]])  # the same 15 again
        wait_until(lambda: running.worker.stats.records >= handled + 15, 30, "re-ingest handled")
        assert count(s) == 15
        assert snapshot() == before  # vectors, attributes and thumbnails unchanged
    assert running.error is None


def test_sigterm_mid_batch_writes_commits_and_exits_0(model_settings):
    # Enough records that the drain after SIGTERM (in-flight batches and those already polled)
    # cannot reach the end even when the signal is handled late on a loaded machine.
    total = 1200
    s = fast(model_settings, batch=50, max_wait_ms=200, max_in_flight=2)
    images = [good_image(i) for i in range(total)]
    publish(s, [image_record(d) for d in images])
    proc = worker_process(s)
    wait_until(lambda: count(s) > 0, 60, "the first batch written", interval_s=0.02)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 25  # bounded
    stats = json.loads(out.strip().splitlines()[-1])
    offsets = committed(s)
    done_ids = {r.key.decode() for r in topic_records(s) if r.offset < offsets.get(_tp(r), 0)}
    assert 0 < stats["records"] < total  # stopped mid-stream...
    assert stats["records"] == sum(offsets.values())  # ...with all it handled committed
    index = index_of(s)
    assert index.count() == len(done_ids)  # written == committed, nothing half-done
    assert all(index.exists(i) for i in done_ids)

    with ThreadWorker(s) as rest:  # the next worker starts exactly where the first stopped
        wait_until(lambda: count(s) == total, 90, "the remaining images indexed")
        wait_until(lambda: sum(committed(s).values()) == total, 10, "all committed")
    assert rest.stats.records == total - stats["records"]  # nothing processed twice
