"""Workers crashed, stalled and stopped under load (issue 14), each bounded in time.

- SIGKILL of a worker that provably holds records read-but-not-written, written-but-not-committed
  and batches in flight (from its own metrics just before the kill), the publisher still going;
- Redis out of memory under ``noeviction``: the worker stalls, commits nothing, says degraded, and
  finishes by itself once memory is raised;
- the shutdown timeout and a second SIGTERM while Redis is down;
- a scale-down: the group leader of two workers stopped, the survivor owns every partition.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import redis as redis_py

from index.store import connect
from tests.integration.worker_support import (
    Publisher,
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
from twinstream.runtime import Encoder
from twinstream.stack import free_port, redis_process
from worker.heartbeat import list_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def metrics(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=2).read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) ([0-9.e+-]+)$", text, re.M)}


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded, same body
        return json.loads(exc.read())
    except OSError:
        return {}


IN_FLIGHT = 'twinstream_worker_uncommitted_records{state="in_flight"}'
WRITTEN = 'twinstream_worker_uncommitted_records{state="written"}'
BATCHES = "twinstream_worker_in_flight_batches"


def test_worker_sigkilled_holding_uncommitted_records_loses_nothing(model_settings, onnx_model,
                                                                    tmp_path):
    """Two workers on a Redis with AOF (so commits also wait for the fsync confirmation): one is
    SIGKILLed while it holds records in every uncommitted state; the other, which holds some of
    its own when the group rebalances, takes over and finishes."""
    server = redis_process(tmp_path, appendonly=True).start()
    port = free_port()
    s = replace(model_settings, redis=replace(model_settings.redis, quant="noquant",
                                              url=f"redis://127.0.0.1:{server.port}/0"))
    s = fast(s, commit_interval_ms=2000, batch=8)
    publisher = Publisher(s, count=900, rate_per_s=60)
    victim = worker_process(fast(s, metrics_port=port, commit_interval_ms=2000, batch=8))
    survivor = worker_process(s)
    try:
        wait_until(lambda: metrics(port).get("twinstream_worker_healthy") == 1, 60, "worker up")
        publisher.start()

        def holding() -> dict | None:  # all three at the same scrape
            m = metrics(port)
            return m if m.get(IN_FLIGHT, 0) > 0 and m.get(WRITTEN, 0) > 0 \
                and m.get(BATCHES, 0) > 0 and count(s) >= 50 else None

        held = wait_until(holding, 60, "the victim holding uncommitted records",
                          interval_s=0.005)
        os.killpg(victim.pid, signal.SIGKILL)  # right after that scrape
        killed_at = time.monotonic()
        victim.wait(10)
        committed_at_kill = sum(committed(s).values())
        assert publisher.is_alive()  # still publishing
        publisher.join(60)
        assert publisher.error is None
        wait_until(lambda: count(s) == len(publisher.ids), 120, "every id indexed")
        recovered_s = time.monotonic() - killed_at
        wait_until(lambda: sum(committed(s).values()) == len(publisher.ids), 30,
                   "the group's committed offsets reaching the published count")
        assert survivor.poll() is None  # the rebalance did not take it down
    finally:
        if victim.poll() is None:
            victim.kill()
        survivor.send_signal(signal.SIGTERM)
        _, err = survivor.communicate(timeout=60)
        if survivor.returncode == 0:  # compare the vectors while Redis runs
            stored = _vectors(index_of(s), publisher.ids[::7])
        server.stop()
    assert survivor.returncode == 0, err[-3000:]
    by_id = {i: good_image(n) for n, i in enumerate(publisher.ids)}
    sample = publisher.ids[::7]  # re-embedded: an id written twice has the same vector
    fresh = Encoder(onnx_model).embed_bytes([by_id[i] for i in sample]).vectors
    for vector, kept in zip(fresh, stored, strict=True):
        np.testing.assert_allclose(kept, vector, atol=1e-5)
    print(f"worker SIGKILL: at the kill {held[IN_FLIGHT]:.0f} records read-not-written, "
          f"{held[WRITTEN]:.0f} written-not-committed, {held[BATCHES]:.0f} batches in flight, "
          f"{committed_at_kill} committed; all {len(publisher.ids)} indexed {recovered_s:.1f} s "
          f"after the kill; committed == published; 0 ids lost")


def _vectors(index, ids: list[str]) -> list[np.ndarray]:
    return [np.array(index.client.execute_command("VEMB", index.keys[0], i), dtype=np.float32)
            for i in ids]


def test_redis_out_of_memory_stalls_degraded_commits_nothing_and_recovers(model_settings,
                                                                          tmp_path):
    server = redis_process(tmp_path, extra_args=["--maxmemory-policy", "noeviction"]).start()
    port = free_port()
    s = replace(model_settings, redis=replace(model_settings.redis,
                                              url=f"redis://127.0.0.1:{server.port}/0"))
    s = fast(s, metrics_port=port)
    direct = redis_py.Redis(port=server.port)
    publish(s, [image_record(good_image(i)) for i in range(50)])
    proc = worker_process(s)
    try:
        wait_until(lambda: count(s) == 50, 60, "the first 50 indexed")
        wait_until(lambda: sum(committed(s).values()) == 50, 20, "the first 50 committed")
        direct.config_set("maxmemory", 1)  # full: every write is refused from now on
        publish(s, [image_record(good_image(i)) for i in range(50, 250)])
        state = wait_until(lambda: (h := health(port)).get("status") == "degraded" and h, 60,
                           "the worker degraded by OOM")
        assert "maxmemory" in json.dumps(state["failing"])
        stalled = sum(committed(s).values())
        retries = metrics(port).get('twinstream_worker_retries_total{target="redis"}', 0)
        time.sleep(5)
        assert sum(committed(s).values()) == stalled == 50  # nothing committed while full
        assert metrics(port).get('twinstream_worker_retries_total{target="redis"}', 0) > retries
        assert proc.poll() is None  # stalls, does not die
        direct.config_set("maxmemory", 0)
        raised_at = time.monotonic()
        wait_until(lambda: count(s) == 250, 60, "every image indexed after memory was raised")
        wait_until(lambda: sum(committed(s).values()) == 250, 20, "everything committed")
        wait_until(lambda: health(port).get("status") == "ok", 20, "health back to ok")
        print(f"redis OOM: stalled at {stalled} committed of 250, recovered "
              f"{time.monotonic() - raised_at:.1f} s after memory was raised, 0 ids lost")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        server.stop()
    assert proc.returncode == 0, err[-3000:]


def test_shutdown_timeout_then_a_second_sigterm_exit_without_committing(model_settings,
                                                                       tmp_path):
    server = redis_process(tmp_path).start()
    s = replace(model_settings, redis=replace(model_settings.redis,
                                              url=f"redis://127.0.0.1:{server.port}/0"))
    s = fast(s, shutdown_timeout_s=4.0)
    publish(s, [image_record(good_image(i)) for i in range(20)])
    first, second = worker_process(s), None
    try:
        wait_until(lambda: count(s) == 20, 60, "20 indexed")
        server.kill()  # from now on no batch can be written
        publish(s, [image_record(good_image(i)) for i in range(20, 40)])
        time.sleep(3)  # the worker reads them and holds them
        before = committed(s)
        started = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=30)
        took = time.monotonic() - started
        assert first.returncode != 0 and "not written" in err  # said so, exit non-zero
        assert 4.0 <= took < 4.0 + 12, took  # the timeout, then the give-up (bounded)
        assert committed(s) == before  # what was not written was not committed

        second = worker_process(s)
        time.sleep(8)  # joined the group and holds the unwritable batch again
        started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        second.send_signal(signal.SIGTERM)  # the impatient operator
        _, err = second.communicate(timeout=30)
        hurried = time.monotonic() - started
        assert second.returncode != 0 and hurried < 4.0 + 1, hurried  # before the timeout
        assert committed(s) == before
        print(f"shutdown: timeout 4.0 s -> exit after {took:.1f} s; second SIGTERM -> exit "
              f"after {hurried:.1f} s; nothing unwritten committed")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        server.stop()


def test_scale_down_survivor_owns_every_partition_within_a_bound(model_settings):
    """The group leader is the worse one to stop (it closes without LeaveGroup, see
    worker/membership.py): its partitions move when its session times out."""
    s = fast(model_settings)
    client = connect(s.redis.url)
    a, b = worker_process(s), worker_process(s)
    try:
        workers = wait_until(lambda: (ws := [w for w in list_workers(client, s.kafka.group)
                                             if w["partitions"]]) and len(ws) == 2 and ws, 60,
                             "two workers with partitions")
        leader = next(w for w in workers if w.get("leader"))
        victim, survivor = (a, b) if leader["pid"] == a.pid else (b, a)
        started = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(30) == 0
        bound_s = s.kafka.session_timeout_ms / 1000 + 10
        wait_until(lambda: [w for w in list_workers(client, s.kafka.group)
                            if w["pid"] == survivor.pid
                            and len(w["partitions"]) == s.kafka.partitions], bound_s,
                   "the survivor owning every partition", interval_s=0.1)
        moved = time.monotonic() - started
        publish(s, [image_record(good_image(i)) for i in range(10)])
        wait_until(lambda: count(s) == 10, 30, "the survivor indexing")
        print(f"scale-down 2 -> 1 (leader stopped): survivor owned all "
              f"{s.kafka.partitions} partitions {moved:.1f} s after the SIGTERM "
              f"(bound {bound_s:.0f} s)")
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
