"""``twinstream reindex --model NEW.onnx``: re-embed the whole topic with a new model.

Workers in a consumer group of their own (``<group>.reindex.<version>``) replay the images topic
from the beginning into the new model's index version, while the live version keeps serving
queries. Because the group is its own, an interrupted re-index resumes where it stopped.

Switching over without a gap:
1. ``twinstream reindex --model new.onnx`` until it says it caught up; keep it running.
2. ``twinstream index promote VERSION``: queries use the new version at once (one SET).
   Workers still on the old model notice within seconds and stop (exit code 4).
3. Start the workers with ``--model new.onnx``; they go on from the live group's offsets.
4. Stop the re-index (Ctrl-C): everything it consumed is written and committed.
Every record is written into the new version by the re-index or by the new workers (both, for
the few around the switch: upserts are idempotent). ``--exit-when-caught-up`` ends step 1 by
itself, for a topic that receives nothing meanwhile (or for scripts and tests).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from index.store import VectorIndex, connect
from twinstream.errors import InputError
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from worker.consumer import preflight
from worker.kafka_io import make_admin
from worker.logs import configure
from worker.pool import WorkerPool, total
from worker.status import reindex_group
from worker.topics import end_offsets, group_offsets, partitions, reader

CHECK_EVERY_S = 1.0


@dataclass
class ReindexResult:
    version: str
    live_version: str | None
    group: str
    records: int
    caught_up: bool
    count: int
    exit_code: int
    workers: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_reindex(settings: Settings, processes: int, exit_when_caught_up: bool = False,
                quiet: bool = False, progress: Callable[[int, int], None] = lambda d, t: None,
                on_caught_up: Callable[[str], None] = lambda _m: None) -> ReindexResult:
    card = Encoder(settings.model.path, threads=1).card
    client = connect(settings.redis.url)
    live = VectorIndex.live_version(client, settings.redis.index)
    if live == card.version:
        raise InputError(f"index {settings.redis.index!r} is already live on model version "
                         f"{card.version}: nothing to re-index")
    group = reindex_group(settings.kafka.group, card.version)
    s = replace(settings, kafka=replace(settings.kafka, group=group))
    preflight(s, reindex=True)
    target = _end_offsets(s)  # what "caught up" means: the topic as it is now
    records = sum(target.values())

    configure(s.worker.log_format, f"reindex-{os.getpid()}", quiet)
    pool = WorkerPool(s, processes, reindex=True, quiet=quiet).start()
    previous = {sig: signal.signal(sig, lambda *_: pool.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    caught_up = False
    admin = make_admin(s.kafka)
    try:
        last_check = 0.0
        while not pool.finished:
            pool.supervise()
            time.sleep(0.2)
            if caught_up or time.monotonic() - last_check < CHECK_EVERY_S:
                continue
            last_check = time.monotonic()
            committed = group_offsets(admin, group)
            done = sum(min(committed.get(tp, 0), end) for tp, end in target.items())
            progress(done, records)
            if done >= records:
                caught_up = True
                on_caught_up(
                    f"caught up: {records} records re-embedded into version {card.version}. "
                    f"Promote it with 'twinstream index promote {card.version}', restart the "
                    "workers with the new model, then stop this re-index (Ctrl-C).")
                if exit_when_caught_up:
                    pool.stop()
    finally:
        admin.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pool.stop()
    index = VectorIndex.for_settings(client, settings.redis, card)
    return ReindexResult(card.version, live, group, records, caught_up, index.count(),
                         pool.exit_code, total(pool.results()))


def _end_offsets(settings: Settings) -> dict:
    consumer = reader(settings.kafka)
    try:
        return end_offsets(consumer, partitions(consumer, settings.kafka.topic))
    finally:
        consumer.close(autocommit=False)
