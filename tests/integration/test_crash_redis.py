"""Redis crashes mid-stream (issue 14): SIGKILL with ``appendfsync everysec``, restarted on the
same files. Offsets are committed only after WAITAOF confirmed the batch on disk
(``worker/durable.py``), so everything committed before the crash is in the restarted Redis, and
every published id ends in the index."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from dataclasses import replace

import pytest

from tests.integration.worker_support import (
    Publisher,
    committed,
    count,
    fast,
    index_of,
    topic_records,
    wait_until,
    worker_process,
)
from twinstream.stack import free_port, redis_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=2).read().decode()
    except OSError:  # not listening yet
        return 0.0
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _tp(record):
    from kafka import TopicPartition

    return TopicPartition(record.topic, record.partition)


def test_redis_sigkilled_mid_stream_with_aof_everysec_loses_nothing_committed(model_settings,
                                                                             tmp_path):
    redis = redis_process(tmp_path, appendonly=True).start()  # appendfsync everysec (default)
    s = replace(model_settings, redis=replace(model_settings.redis,
                                              url=f"redis://127.0.0.1:{redis.port}/0"))
    port = free_port()
    s = fast(s, metrics_port=port, batch=8, max_wait_ms=10)
    publisher = Publisher(s, count=1200, rate_per_s=60)
    proc = worker_process(s)
    try:
        wait_until(lambda: metric(port, "twinstream_worker_healthy") == 1, 60,
                   "the worker up", interval_s=0.2)
        publisher.start()
        wait_until(lambda: count(s) >= 100, 90, "images flowing into Redis")
        # Commits follow the fsync confirmation (up to a second): let some land, so that the
        # check after the restart has committed ids to look at.
        wait_until(lambda: sum(committed(s).values()) >= 60, 30, "records committed")
        in_flight = wait_until(lambda: metric(port, "twinstream_worker_in_flight_batches"), 10,
                               "batches in flight in the worker", interval_s=0.01)
        indexed_at_kill = count(s)
        redis.kill()  # SIGKILL: whatever the AOF had not fsynced is gone
        killed_at = time.monotonic()
        published_at_kill = len(publisher.ids)
        time.sleep(2.0)  # commits in flight at the kill land (or fail)
        at_kill = committed(s)
        assert publisher.is_alive()  # the publisher keeps publishing through the outage
        time.sleep(3.0)
        assert committed(s) == at_kill  # nothing is committed while Redis is down
        assert proc.poll() is None

        redis.start()  # the same files: Redis replays its AOF
        restarted_at = time.monotonic()
        index = index_of(s)
        below = [r.key.decode() for r in topic_records(s) if r.offset < at_kill.get(_tp(r), 0)]
        missing = [i for i in below if not index.exists(i)]
        assert below and not missing, f"{len(missing)} committed ids lost with Redis"

        publisher.join(60)
        assert publisher.error is None
        wait_until(lambda: count(s) == len(publisher.ids), 120, "every published id indexed")
        recovered_s = time.monotonic() - restarted_at
        assert all(index.exists(i) for i in publisher.ids)
        wait_until(lambda: sum(committed(s).values()) == len(publisher.ids), 30,
                   "every record committed")
        durable_waits = metric(port, "twinstream_worker_durable_seconds_count")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        redis.stop()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["records"] >= len(publisher.ids)
    print(f"redis crash: {in_flight:.0f} batches in flight, {indexed_at_kill} indexed, "
          f"{sum(at_kill.values())} committed, {published_at_kill} published at the kill; "
          f"{len(below)} committed ids all in the restarted Redis; all {len(publisher.ids)} "
          f"indexed {recovered_s:.1f} s after the restart ({time.monotonic() - killed_at:.1f} s "
          f"after the kill); {durable_waits:.0f} batches through the durable step; 0 ids lost")
