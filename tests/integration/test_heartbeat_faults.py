"""The heartbeat thread survives every kind of Redis failure (issue 14): a real Redis behind a
proxy that drops connections, swallows traffic or refuses, a Redis out of memory, error replies
that the index layer turns into our errors, and a bug in what it publishes. After each fault the
next beat lands again, from the same thread."""

from __future__ import annotations

import json
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from index import layout
from index.store import VectorIndex
from tests.integration.flaky_proxy import FlakyProxy
from tests.integration.worker_support import wait_until
from twinstream.stack import redis_process
from worker.heartbeat import Heartbeat

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path):
    server = redis_process(tmp_path).start()
    yield server
    server.stop()


def test_heartbeat_thread_survives_dropped_stalled_refused_oom_and_error_replies(own_redis):
    direct = redis.Redis(port=own_redis.port)
    proxy = FlakyProxy(own_redis.port)
    # No retries inside redis-py: every fault reaches the heartbeat (the worker's client retries
    # a dropped connection once more, which only hides some of them).
    client = redis.Redis(port=proxy.port, socket_timeout=0.3, socket_connect_timeout=0.3,
                         retry=Retry(NoBackoff(), 0))
    counter = {"n": 0, "explode": False}

    def describe() -> dict:
        counter["n"] += 1
        if counter["explode"]:
            raise RuntimeError("a bug in describe()")
        return {"n": counter["n"]}

    beat = Heartbeat(client, "hb-key", describe, interval_s=0.05,
                     on_beat=lambda: VectorIndex.live_version(client, "hb-index")).start()

    def published() -> int:
        raw = direct.get("hb-key")
        return json.loads(raw)["n"] if raw else 0

    def fault(what: str, start, end, seconds: float = 1.0) -> None:
        failures, last = beat.failures, published()
        start()
        time.sleep(seconds)
        end()
        assert beat.failures > failures, f"{what}: the fault never reached the heartbeat"
        wait_until(lambda: published() > last and beat.alive, 5, f"a beat after {what}")

    def drop_mid_command():
        for _ in range(5):  # hold the commands in flight, then cut their connections
            proxy.mode = "blackhole"
            time.sleep(0.1)
            proxy.drop_all()
            proxy.mode = "pass"
            time.sleep(0.1)

    def set_mode(mode):
        return lambda: setattr(proxy, "mode", mode)

    def back_to_pass():
        proxy.mode = "pass"
        proxy.drop_all()  # the connections the blackhole swallowed are dead for the client

    try:
        wait_until(lambda: published() > 0, 5, "the first beat")
        fault("connections dropped mid-command", lambda: None, drop_mid_command, seconds=0)
        fault("a stalled Redis (timeouts)", set_mode("blackhole"), back_to_pass)
        fault("Redis gone (connections cut, new ones refused)",
              lambda: (set_mode("refuse")(), proxy.drop_all()), back_to_pass)
        fault("out of memory (noeviction)",
              lambda: direct.config_set("maxmemory", 1), lambda: direct.config_set("maxmemory", 0))
        fault("an error reply the index layer translates (WRONGTYPE)",
              lambda: direct.hset(layout.alias_key("hb-index"), "x", "y"),
              lambda: direct.delete(layout.alias_key("hb-index")))
        fault("a bug in describe()", lambda: counter.update(explode=True),
              lambda: counter.update(explode=False), seconds=0.3)
        assert beat.alive
        assert "TimeoutError" in beat.last_error or beat.failures >= 6
    finally:
        beat.stop()
        proxy.close()
