"""Issue 11: records that used to crash-loop or hang a worker, on the real broker and Redis 8.

Each test publishes the hostile record between good ones and asserts that the worker keeps
running, every record ends in the index or in the dead-letter topic, and the offsets reach the
end of the topic.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.imagegen import encode, gradient
from tests.integration.worker_support import (
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class UnencodableName(str):
    """A header name that kafka-python writes as bytes that are not UTF-8 (as a C or Go producer
    can): the consumer library itself fails to read such a record."""

    def encode(self, *_args, **_kwargs) -> bytes:
        return b"\xff\xfe-not-utf8"


def poison_records() -> list[tuple]:
    _, value, headers = image_record(good_image(900))
    deep = b'{"a":' * 2000 + b"1" + b"}" * 2000  # under the size bound, over the parser's depth
    attributes = {
        "nan": b'{"x": NaN}',
        "infinity": b'{"x": -Infinity}',
        "huge-float": b'{"x": 1e999}',
        "huge-int": b'{"x": ' + b"9" * 5000 + b"}",
        "lone-surrogate-value": b'{"source": "/img/\\udcff.png"}',
        "lone-surrogate-name": b'{"\\udc80": 1}',
        "deep": deep,
        "nested-17": b'{"a":' * 17 + b"1" + b"}" * 17,
        "label-escape": b'{"label": "cat\\u001b[2J"}',
        "label-number": b'{"label": 7}',
        "label-empty": b'{"label": "  "}',
    }
    records = [(f"poison-{name}".encode(), value, [*headers[:2], ("attributes", raw)])
               for name, raw in attributes.items()]
    records.append((b"poison-uri-control", b"", [("uri", b"/tmp/a\x1b[2J.png")]))
    return records


def unreadable_record() -> tuple:
    _, value, headers = image_record(good_image(901))
    return (b"poison-unreadable-header", value, [*headers, (UnencodableName("x"), b"1")])


def test_attributes_nan_surrogates_and_unreadable_headers_become_dead_letters(model_settings):
    """Before the fix: the first of these made the worker exit 70, the pool restarted it, the
    record came back, forever (NaN/surrogates failed in the index; the header name inside
    kafka-python's poll)."""
    s = fast(model_settings, batch=8)
    good = [good_image(i) for i in range(40)]
    poison = poison_records()
    records = [image_record(d) for d in good]
    records = records[:10] + poison[:6] + records[10:30] + poison[6:] + records[30:]
    publish(s, records[:20])
    publish(s, [unreadable_record()])  # a hostile producer's own batch
    publish(s, records[20:])
    records.append(unreadable_record())
    with ThreadWorker(s) as running:
        wait_until(lambda: running.worker.stats.records >= len(records) or running.error,
                   90, "every record handled")
        assert running.error is None and running.thread.is_alive()
        wait_until(lambda: sum(committed(s).values()) == len(records), 15, "all committed")
        assert running.worker.health.snapshot()["status"] == "ok"
    assert running.error is None
    index = index_of(s)
    assert index.count() == len(good)
    assert all(index.exists(content_id(d)) for d in good)
    dead = topic_records(s, s.kafka.dlq_topic)
    # The record kafka-python cannot read has no key we could know: its letter names its place.
    unreadable = [dict(r.headers) for r in dead if r.key is None]
    assert len(unreadable) == 1 and b"cannot be read" in unreadable[0]["error.reason"]
    assert unreadable[0]["error.source"].startswith(s.kafka.topic.encode() + b"/")
    assert unreadable[0]["error.value-dropped"]  # so that a replay skips it
    letters = {r.key: dict(r.headers) for r in dead if r.key is not None}
    assert set(letters) == {key for key, _, _ in poison}
    reasons = {k.decode(): v["error.reason"].decode() for k, v in letters.items()}
    assert all(v["error.stage"] == b"parse" for v in letters.values()), reasons
    assert "finite" in reasons["poison-nan"] or "NaN" in reasons["poison-nan"]
    assert "surrogate" in reasons["poison-lone-surrogate-value"]
    assert "nested" in reasons["poison-nested-17"]
    assert "control" in reasons["poison-label-escape"]
    assert "\x1b" not in "".join(reasons.values())  # reasons never carry terminal escapes


def test_a_fifo_uri_is_refused_at_once_and_sigterm_exits_with_a_true_summary(model_settings,
                                                                              tmp_path):
    """Before the fix: the worker opened the FIFO, blocked for good, and ignored SIGTERM."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    device = "/dev/zero"
    s = fast(model_settings, uri_roots=f"{tmp_path}:/dev", shutdown_timeout_s=5.0)
    by_reference = [(b"fifo", b"", [("uri", str(fifo).encode())]),
                    (b"char-device", b"", [("uri", device.encode())])]
    good = [image_record(good_image(i)) for i in range(10)]
    publish(s, good[:5] + by_reference + good[5:])
    proc = worker_process(s)
    try:
        wait_until(lambda: sum(committed(s).values()) == 12, 60, "all 12 records committed")
        letters = {r.key: dict(r.headers) for r in topic_records(s, s.kafka.dlq_topic)}
        assert set(letters) == {b"fifo", b"char-device"}
        assert all(b"not a regular file" in h["error.reason"] for h in letters.values())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["records"] == 12
    assert count(s) == 10


def test_a_stuck_batch_turns_health_degraded_and_shutdown_does_not_wait_for_it(model_settings):
    """A step that never returns (a hung NFS read, a wedged library): health says so within the
    stall bound, the lag gauge counts the records behind it, and stopping gives up on it
    truthfully instead of hanging."""
    s = fast(model_settings, stall_timeout_s=1.0, shutdown_timeout_s=2.0)
    publish(s, [image_record(good_image(i)) for i in range(12)])
    running = ThreadWorker(s)
    release = running.worker  # the embed step blocks until the test is done
    import threading

    blocked = threading.Event()
    forever = threading.Event()

    def wedged(_arrays):
        blocked.set()
        forever.wait(120)
        raise RuntimeError("released")

    release.encoder.embed_arrays = wedged
    with running:
        assert blocked.wait(60), "the embed step was never reached"
        health = wait_until(lambda: (h := running.worker.health_report())["status"] ==
                            "degraded" and h, 10, "health degraded by the stall")
        assert "pipeline" in health["failing"]
        assert "embed" in health["failing"]["pipeline"]["error"]
        lag = wait_until(lambda: sum(_lag_gauge(running.worker).values()), 10,
                         "the lag gauge counting the stuck records")
        assert lag == 12
        started = time.monotonic()
        running.worker.stop()
        running.thread.join(30)
        assert not running.thread.is_alive(), "shutdown waited for the stuck step"
        assert time.monotonic() - started < 20
    forever.set()
    assert "12 records not written" in str(running.error)
    assert sum(committed(s).values()) == 0


def _lag_gauge(worker) -> dict:
    return {s.labels["partition"]: s.value for metric in worker.metrics.lag.collect()
            for s in metric.samples}


def test_a_png_bigger_than_the_pixel_budget_is_a_dead_letter_not_a_crash(model_settings):
    s = fast(model_settings, max_image_pixels=10_000)
    big = encode(gradient(size=120, seed=2))  # 14,400 pixels
    publish(s, [image_record(big, "too-many-pixels"), image_record(good_image(1))])
    with ThreadWorker(s) as running:
        wait_until(lambda: sum(committed(s).values()) == 2, 60, "both records committed")
    assert running.error is None
    letters = topic_records(s, s.kafka.dlq_topic)
    assert [r.key for r in letters] == [b"too-many-pixels"]


def test_ingest_of_a_folder_with_a_non_utf8_name_and_a_fifo_is_indexed_not_crash_looped(
        model_settings, tmp_path):
    """Before the fix: a file name that is not UTF-8 became a lone surrogate in the `source`
    attribute and crash-looped every worker; a FIFO named on the command line hung ingest."""
    from tests.integration.worker_support import run_cli

    s = fast(model_settings)
    folder = tmp_path / "data" / "cats"
    folder.mkdir(parents=True)
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(latin1, "wb") as f:
        f.write(encode(gradient(seed=41)))
    (folder / "plain.png").write_bytes(encode(gradient(seed=42)))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    result = run_cli(s, "ingest", str(tmp_path / "data"), str(fifo), "--json", timeout=60)
    assert result.returncode == 1, result.stderr  # one file failed: the FIFO
    summary = json.loads(result.stdout)
    assert summary["published"] == 2 and summary["failed"] == 1
    assert "not a regular file" in json.dumps(summary["failures"])
    with ThreadWorker(s) as running:
        wait_until(lambda: count(s) == 2, 60, "both images indexed")
    assert running.error is None
    index = index_of(s)
    sources = {h.attributes["source"] for h in index.search(index.vector(
        content_id(encode(gradient(seed=42)))), k=5)}
    assert any(src.endswith("caf\\xe9.png") for src in sources), sources


def test_dlq_list_escapes_keys_and_reasons_for_the_terminal(model_settings):
    from tests.integration.worker_support import run_cli

    s = fast(model_settings)
    publish(s, [(b"evil\x1b[2Jkey", b"not an image", [])])
    with ThreadWorker(s) as running:
        wait_until(lambda: running.worker.stats.records == 1, 60, "the record handled")
    text = run_cli(s, "dlq", "list").stdout
    assert "evil" in text and "\x1b" not in text and "\\x1b[2J" in text


def test_a_worker_process_that_crashes_twice_in_a_row_reports_a_crash_loop(model_settings):
    """Before: a crash-looping consumer was restarted for ever while `status` said ok."""
    from index.store import connect
    from worker.heartbeat import list_workers

    s = fast(model_settings, processes=2)
    client = connect(s.redis.url)
    proc = worker_process(s, "--processes", "2")
    killed: set[int] = set()

    def children() -> list[dict]:
        return [w for w in list_workers(client, s.kafka.group) if w["pid"] not in killed]

    try:
        first = wait_until(lambda: len(children()) == 2 and children(), 60,
                           "both worker children's heartbeats")
        seen = {w["pid"] for w in first}
        victim = first[0]["pid"]
        for _ in range(2):  # the same slot crashes twice in a row, within a minute
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            replacement = wait_until(lambda: [w for w in children() if w["pid"] not in seen],
                                     60, "the crashed child started again")[0]
            seen.add(replacement["pid"])
            if len(killed) < 2:
                victim = replacement["pid"]
        restarted = wait_until(
            lambda: [w for w in children() if w["health"]["status"] == "degraded"], 60,
            "the restarted child reporting the crash loop")
        assert "restarts" in restarted[0]["health"]["failing"]
        assert "2 crashes in a row" in restarted[0]["health"]["failing"]["restarts"]["error"]
        assert proc.poll() is None  # the pool itself keeps going
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
