"""Who is working: each worker writes a short-lived key to Redis every few seconds.

The broker knows the group's members, but the Kafka admin call that would list them
(DescribeGroups) fails against tansu, the embedded broker. A heartbeat key works everywhere and
carries more: the worker's partitions, health, counts and model version. A worker that dies
stops refreshing its key and it expires after ``TTL_S``.

Key: ``twinstream:workers:{<group>}:<worker id>`` (value: JSON, see ``Worker.describe``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

INTERVAL_S = 2.0
TTL_S = 10

log = logging.getLogger("twinstream.worker")


def heartbeat_key(group: str, worker_id: str) -> str:
    return f"twinstream:workers:{{{group}}}:{worker_id}"


class Heartbeat:
    """A daemon thread: ``describe()`` to Redis every ``interval_s``, then ``on_beat()``."""

    def __init__(self, client: redis.Redis, key: str, describe: Callable[[], dict],
                 on_beat: Callable[[], None] = lambda: None, interval_s: float = INTERVAL_S):
        self.client = client
        self.key = key
        self.describe = describe
        self.on_beat = on_beat
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.beats = 0
        self.failures = 0
        self.last_error = ""

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def beat_soon(self) -> None:
        """Publish now rather than at the next tick (the partitions moved, say)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            self.client.delete(self.key)  # gone at once from `twinstream status`
        except Exception:  # Redis unreachable or failing: the key expires by itself
            pass

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._beat()

    def _beat(self) -> None:
        """One beat. Nothing it meets may end the thread: a heartbeat that dies makes a working
        worker vanish from ``twinstream status`` and stop noticing a promotion, for good. Redis
        errors arrive as redis-py's (connection, timeout, error replies such as OOM or LOADING),
        as ours (``TwinstreamError``: the index layer translates them), or as whatever a half-read
        reply raises; all are counted and retried at the next tick."""
        try:
            self.client.set(self.key, json.dumps(self.describe(), default=str), ex=TTL_S)
            self.on_beat()
        except Exception as exc:  # see above; the writer reports Redis health
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.debug("heartbeat failed: %s", self.last_error)
        else:
            self.beats += 1


def list_workers(client: redis.Redis, group: str) -> list[dict]:
    """Live workers of ``group`` and of its re-index groups (``<group>.reindex.<version>``)."""
    found = []
    for key in client.scan_iter(match="twinstream:workers:*", count=500):
        raw = client.get(key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        g = str(data.get("group", ""))
        if g == group or g.startswith(f"{group}.reindex."):
            data["seen_s_ago"] = round(time.time() - float(data.get("seen_at", 0)), 1)
            found.append(data)
    return sorted(found, key=lambda d: (d.get("group", ""), d.get("worker", "")))
