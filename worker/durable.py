"""Durable before commit: a batch counts as written only once Redis says it is on disk.

With Redis's default ``appendfsync everysec``, a Redis crash loses up to a second of
acknowledged writes; if the worker had already committed their Kafka offsets, those images would
be gone for good. So, after the writer, this step asks Redis to confirm:

- ``local``: ``WAITAOF 1 0`` -- the append-only file is fsynced up to here (Redis >= 7.2);
- ``replicas``: also ``WAIT n`` -- n replicas acknowledged up to here;
- ``none``: no wait (a Redis without AOF or replicas cannot promise anything anyway).

WAITAOF and WAIT wait for what *their connection* wrote, and the index writes on whatever pooled
connection is free. So the confirmation writes a tiny probe key first, on the connection that then
waits: the AOF and the replication stream are in execution order, so the probe being on disk
means everything executed before it is too -- the whole batch, and the batches before it (one
wait covers every batch the writer finished before the probe). A Redis that restarted between
the writer and the probe may have lost the batch while the probe lands on the new instance, so
the batch's ids are checked to be there (and its deletions gone) after the wait.

A confirmation that does not come in ``durability_timeout_ms``, or a batch found missing, makes
the step write the batch again and wait again, with backoff, until it succeeds or the worker gives
up at shutdown (then the batch is not committed and will be re-delivered). Meanwhile the worker
reports Redis as failing (``degraded``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster

from index import layout
from index.store import VectorIndex
from twinstream.errors import ConfigError, ServiceUnavailable
from twinstream.settings import RedisSettings
from worker.batch import Batch, Delete, Upsert, index_operations
from worker.health import Health
from worker.logs import event
from worker.metrics import WorkerMetrics
from worker.retry import Backoff, GaveUp, retry
from worker.writer import always

log = logging.getLogger("twinstream.worker")

PROBE_PREFIX = "twinstream:durable-probe"


class NotDurable(ServiceUnavailable):
    """Redis did not confirm a batch as durable in time, or lost it: write it again."""


def aof_enabled(client) -> bool:
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    for node in nodes:
        conn = client if node is None else client.get_redis_connection(node)
        if str(conn.info("persistence").get("aof_enabled", 0)) != "1":
            return False
    return True


def resolve_level(client, cfg: RedisSettings) -> str:
    """``auto`` made concrete; a level the server cannot give is a configuration error."""
    level = cfg.durability
    has_aof = aof_enabled(client)
    if level == "auto":
        return "local" if has_aof else "none"
    if level == "local" and not has_aof:
        raise ConfigError("TWINSTREAM_REDIS_DURABILITY=local needs Redis with append-only "
                          "files on (appendonly yes); use none, or turn AOF on")
    return level


class Confirmer:
    """Asks every master to confirm what was executed so far (see the module docstring)."""

    def __init__(self, client, level: str, timeout_ms: int, min_replicas: int = 1,
                 aof: bool = True):
        self.client, self.level, self.timeout_ms = client, level, timeout_ms
        self.min_replicas, self.aof = min_replicas, aof
        self._probe_keys: dict[str, str] = {}

    def confirm(self) -> float:
        """Wait for the confirmation; returns the (monotonic) moment before the probe was sent:
        everything executed before it is confirmed."""
        sent = time.monotonic()
        if self.level == "none":
            return sent
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_primaries():
                self._confirm_on(self.client.get_redis_connection(node), self._probe_key(node))
        else:
            self._confirm_on(self.client, PROBE_PREFIX)
        return sent

    def _confirm_on(self, conn: redis.Redis, probe_key: str) -> None:
        pipe = conn.pipeline(transaction=False)  # one connection: probe, then the wait
        pipe.set(probe_key, time.time(), ex=3600)
        if self.aof:
            pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
        if self.level == "replicas":
            pipe.execute_command("WAIT", self.min_replicas, self.timeout_ms)
        replies = pipe.execute()[1:]
        if self.aof and int(replies[0][0]) < 1:
            raise NotDurable(f"Redis did not fsync its append-only file within "
                             f"{self.timeout_ms} ms")
        if self.level == "replicas" and int(replies[-1]) < self.min_replicas:
            raise NotDurable(f"only {replies[-1]} of {self.min_replicas} replicas acknowledged "
                             f"within {self.timeout_ms} ms")

    def _probe_key(self, node) -> str:
        """A key served by ``node`` (cluster): a hash tag whose slot falls in its ranges."""
        if node.name not in self._probe_keys:
            slots = self.client.cluster_slots()  # {(start, end): {...primary...}}
            owned = [rng for rng, info in slots.items()
                     if f"{info['primary'][0]}:{info['primary'][1]}" == node.name
                     or info["primary"][1] == node.port]
            for n in range(100_000):
                key = f"{PROBE_PREFIX}:{{p{n}}}"
                slot = self.client.keyslot(key)
                if any(start <= slot <= end for start, end in owned):
                    self._probe_keys[node.name] = key
                    break
            else:  # pragma: no cover - 100k tags always reach every slot range
                raise NotDurable(f"no probe key for {node.name}")
        return self._probe_keys[node.name]


def check_present(index: VectorIndex, ops: list[Upsert | Delete]) -> None:
    """The index is still there, every upserted id is in it and every deleted one is not (one
    round trip)."""
    pipe = index.client.pipeline(transaction=False)
    pipe.exists(layout.meta_key(index.info.name, index.info.version))
    for op in ops:
        pipe.execute_command("VISMEMBER", index.keys[layout.shard_of(op.id, len(index.keys))],
                             op.id)
    meta, *there = pipe.execute()
    if not meta:
        raise NotDurable(f"index {index.info.name!r} vanished from Redis after the batch was "
                         "written; not committing it")
    missing = [op.id for op, present in zip(ops, there, strict=True)
               if bool(present) != isinstance(op, Upsert)]
    if missing:
        raise NotDurable(f"{len(missing)} ids of the batch are not as written (Redis restarted "
                         f"and lost them?), e.g. {missing[0]!r}")


class Durable:
    """The pipeline step after the writer (see the module docstring)."""

    name = "durable"

    def __init__(self, index: VectorIndex, confirmer: Confirmer, rewrite: Callable[[Batch], None],
                 model_version: str, health: Health, metrics: WorkerMetrics,
                 give_up: threading.Event, backoff: Backoff = Backoff()):
        self.index, self.confirmer, self.rewrite = index, confirmer, rewrite
        self.model_version = model_version
        self.health, self.metrics, self.give_up, self.backoff = health, metrics, give_up, backoff
        self.confirmations = 0  # waits for Redis (one covers every batch written before it)
        self._covered_until = float("-inf")

    def __call__(self, batch: Batch) -> None:
        if not batch.written or self.confirmer.level == "none":
            return
        ops = index_operations(batch.items, self.model_version)
        attempts = [0]

        def confirm() -> None:
            if attempts[0]:
                self.rewrite(batch)  # whatever a crash lost, written again before waiting
            attempts[0] += 1
            if attempts[0] > 1 or batch.written_at > self._covered_until:
                self._covered_until = self.confirmer.confirm()
                self.confirmations += 1
            check_present(self.index, ops)

        try:
            # Like the writer: whatever fails here is the world's (or a bug's); waiting beats
            # a crash loop that would bring the same batch back.
            retry(confirm, always, self.give_up, self.backoff, self._failed)
        except GaveUp:
            batch.written = False  # not committed: re-delivered
            event(log, "gave up confirming a batch durable; it will be re-delivered",
                  logging.WARNING, batch=batch.seq, records=len(batch.items))
            return
        if "redis" in self.health.snapshot()["failing"]:
            event(log, "redis confirmed the batch durable again")
        self.health.ok("redis")
        if self.health.healthy:
            self.metrics.healthy.set(1)

    def _failed(self, exc: Exception, attempt: int, delay: float) -> None:
        self.health.failing("redis", f"{type(exc).__name__}: {exc}")
        self.metrics.retries.labels("redis").inc()
        self.metrics.healthy.set(0)
        level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
        event(log, "redis did not confirm the batch durable; writing it again", level,
              attempt=attempt, retry_in_s=round(delay, 2), error=str(exc)[:200])
