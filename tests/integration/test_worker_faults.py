"""What a worker does about a world that changes under it (issue 14): a pool whose parent is
SIGKILLed, an index that vanishes from Redis, a consumer that never gets a partition."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace

import pytest
import redis as redis_py

from index.store import connect
from tests.integration.test_stack import alive, wait_gone
from tests.integration.worker_support import (
    ThreadWorker,
    committed,
    count,
    fast,
    good_image,
    image_record,
    publish,
    run_cli,
    wait_until,
    worker_process,
)
from twinstream.errors import ServiceUnavailable
from twinstream.stack import redis_process
from worker.heartbeat import list_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pool_children_die_with_a_sigkilled_parent(model_settings):
    s = fast(model_settings)
    pool = worker_process(s, "--processes", "2")
    client = connect(s.redis.url)
    try:
        children = wait_until(lambda: (pids := {w["pid"] for w in list_workers(client,
                                                                             s.kafka.group)})
                              and len(pids) == 2 and pids, 60, "two children heartbeating")
        assert all(alive(pid) for pid in children)
        pool.send_signal(signal.SIGKILL)  # only the parent: its process group is left alone
        pool.wait(10)
        assert wait_gone(children, timeout=30), "children outlived their pool as orphans"
    finally:
        if pool.poll() is None:
            pool.kill()
        for pid in children if "children" in locals() else ():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_vanished_index_holds_writes_and_reports_degraded(model_settings, tmp_path):
    server = redis_process(tmp_path).start()
    s = replace(model_settings, redis=replace(model_settings.redis,
                                              url=f"redis://127.0.0.1:{server.port}/0"))
    s = fast(s, shutdown_timeout_s=2.0)
    direct = redis_py.Redis(port=server.port)
    publish(s, [image_record(good_image(i)) for i in range(20)])
    running = ThreadWorker(s).__enter__()
    try:
        wait_until(lambda: count(s) == 20, 60, "20 indexed")
        wait_until(lambda: sum(committed(s).values()) == 20, 20, "20 committed")
        direct.flushall()  # a restart without persistence, a failover to an empty replica...
        publish(s, [image_record(good_image(i)) for i in range(20, 40)])
        state = wait_until(lambda: (h := running.worker.health_report())["status"] == "degraded"
                           and "index" in h["failing"] and h, 20, "the worker degraded")
        assert "vanished" in state["failing"]["index"]["error"]
        time.sleep(3)
        vector_sets = [k for k in direct.scan_iter("*") if direct.type(k) == b"vectorset"]
        assert vector_sets == []  # nothing written into an orphan
        assert sum(committed(s).values()) == 20  # nothing committed
        assert running.thread.is_alive()
        text = run_cli(s, "status").stdout
        assert "vanished" in text
    finally:
        running.worker.stop()
        running.thread.join(60)
        server.stop()
    assert isinstance(running.error, ServiceUnavailable)  # stopped with its batch unwritten


def test_a_worker_without_partitions_for_too_long_is_reported(model_settings):
    s = fast(model_settings, unassigned_alarm_s=4.0)
    s = replace(s, kafka=replace(s.kafka, partitions=1))  # two workers, one partition
    with ThreadWorker(s, worker_id="spare-a") as a, ThreadWorker(s, worker_id="spare-b") as b:
        idle = wait_until(lambda: next((w for w in (a, b) if not w.worker.reader.assigned
                                        and (w.worker.reader.unassigned_since or 1e18)
                                        < time.monotonic() - 5), None), 60,
                          "one worker without a partition for 5 s")
        report = idle.worker.health_report()
        assert report["status"] == "degraded" and "assignment" in report["failing"]
        assert report["unassigned_for_s"] > 4
        status = wait_until(lambda: (st := json.loads(run_cli(s, "status", "--json").stdout))
                            and any("assignment" in w["health"]["failing"]
                                    for w in st["workers"]) and st, 20,
                            "status showing the worker without partitions: "
                            + run_cli(s, "status", "--json").stdout[:1500])
        assert any(w["unassigned_for_s"] > 4 for w in status["workers"])
        text = run_cli(s, "status").stdout
        assert "none for" in text, text
    assert a.error is None and b.error is None
