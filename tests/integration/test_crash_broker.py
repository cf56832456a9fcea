"""The broker crashes mid-stream and comes back (issue 14): SIGKILL, not a polite stop.

The embedded broker runs on its durable engine (tansu ``s3://`` on the local S3 stand-in, see
``twinstream/stack.py``), so the topic and the group's committed offsets outlive the crash. The
worker is neither restarted nor told: it must reconnect by itself and continue from its
committed offsets, and every published id must end in the index.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace

import pytest

from tests.integration.worker_support import (
    committed,
    count,
    fast,
    good_image,
    image_record,
    index_of,
    publish,
    wait_until,
    worker_process,
)
from twinstream.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OUTAGE_S = 8.0


@pytest.fixture
def durable_broker(tmp_path):
    with LocalStack(workdir=tmp_path / "stack", durable_broker=True,
                    redis_url="unused://") as stack:
        yield stack


def test_broker_sigkilled_mid_stream_worker_reconnects_and_continues(model_settings,
                                                                     durable_broker):
    s = fast(model_settings)
    s = replace(s, kafka=replace(s.kafka, bootstrap=durable_broker.kafka_bootstrap))
    first = [image_record(good_image(i)) for i in range(300)]
    second = [image_record(good_image(i)) for i in range(300, 500)]
    publish(s, first)
    proc = worker_process(s)
    broker = durable_broker.broker
    try:
        wait_until(lambda: count(s) >= 60, 90, "the worker indexing", interval_s=0.02)
        indexed_at_kill = count(s)
        committed_before = sum(committed(s).values())
        assert indexed_at_kill < len(first)  # mid-stream: work was left
        broker.kill()  # SIGKILL: no flush, no goodbye
        killed_at = time.monotonic()
        time.sleep(OUTAGE_S)
        assert proc.poll() is None, "the worker died with the broker"
        broker.start()  # same port, same S3 bucket
        restarted_at = time.monotonic()
        assert sum(committed(s).values()) >= committed_before  # offsets outlived the crash
        publish(s, second)  # producers come back too
        wait_until(lambda: count(s) > indexed_at_kill, 120, "indexing resuming")
        resumed_s = time.monotonic() - restarted_at
        wait_until(lambda: count(s) == len(first) + len(second), 180, "every id indexed")
        drained_s = time.monotonic() - restarted_at
        index = index_of(s)
        assert all(index.exists(key.decode()) for key, _, _ in first + second)
        wait_until(lambda: sum(committed(s).values()) == len(first) + len(second), 30,
                   "every record committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    # Continued from its committed offsets: at most the uncommitted tail was done twice, not
    # the whole topic again.
    replayed = stats["records"] - (len(first) + len(second))
    assert 0 <= replayed < 100, stats
    print(f"broker crash: {indexed_at_kill} indexed and {committed_before} committed at the kill "
          f"(of {len(first)}), outage {restarted_at - killed_at:.1f} s, indexing resumed "
          f"{resumed_s:.1f} s after the restart, all {len(first) + len(second)} indexed "
          f"{drained_s:.1f} s after it, {replayed} records handled twice, 0 ids lost")
