"""Helpers for the streaming tests: publish records, run a worker in a thread or a process,
read a topic back, wait for conditions. Everything talks to the real broker and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from index.store import VectorIndex, connect
from tests.imagegen import encode, gradient
from twinstream.messages import ImageMessage, content_id
from twinstream.settings import child_env
from worker.kafka_io import ensure_topics, make_admin, make_producer
from worker.topics import group_offsets, read_all

ROOT = Path(__file__).resolve().parents[2]


def fast(settings, **worker):
    """Test settings: small batches, short waits, quick commits (plus any overrides)."""
    defaults = dict(batch=16, max_wait_ms=20, commit_interval_ms=100, shutdown_timeout_s=20.0,
                    processes=1, decode_threads=2)
    defaults.update(worker)
    return replace(settings, worker=replace(settings.worker, **defaults))


def good_image(i: int, size: int = 16) -> bytes:
    return encode(gradient(size=size, seed=10_000 + i))


def publish(settings, records: list[tuple[bytes | None, bytes | None, list]]) -> None:
    """Raw (key, value, headers) records, as a hostile producer could send them."""
    ensure_topics(settings.kafka)
    producer = make_producer(settings.kafka)
    try:
        for key, value, headers in records:
            producer.send(settings.kafka.topic, key=key, value=value, headers=headers)
        producer.flush(30)
    finally:
        producer.close(10)


def image_record(data: bytes, image_id: str | None = None, **attributes):
    msg = ImageMessage(id=image_id or content_id(data), data=data, content_type="image/png",
                       attributes=attributes)
    return msg.to_record()


class Publisher(threading.Thread):
    """Publishes good images at a steady rate in the background (``ids`` as it goes)."""

    def __init__(self, settings, count: int, rate_per_s: float, first: int = 0):
        super().__init__(daemon=True)
        self.settings, self.count, self.rate, self.first = settings, count, rate_per_s, first
        self.ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ensure_topics(self.settings.kafka)
            producer = make_producer(self.settings.kafka, linger_ms=0)
            start = time.monotonic()
            for n in range(self.count):
                data = good_image(self.first + n)
                key, value, headers = image_record(data)
                producer.send(self.settings.kafka.topic, key=key, value=value, headers=headers)
                self.ids.append(key.decode())
                pause = start + (n + 1) / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            producer.flush(30)
            producer.close(10)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


class ThreadWorker:
    """A ``Worker`` running in a thread of this process (no signals: ``stop()``)."""

    def __init__(self, settings, **kwargs):
        from worker.consumer import Worker

        self.worker = Worker(settings, **kwargs)
        self.stats = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.stats = self.worker.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> ThreadWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60) -> None:
        self.worker.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop in time"


def settings_env(settings) -> dict:
    """The environment that gives a child process exactly these settings."""
    return child_env(settings, os.environ)


def worker_process(settings, *args: str) -> subprocess.Popen:
    """``twinstream worker`` as a separate process (for signals and crashes)."""
    return subprocess.Popen([sys.executable, "-m", "twinstream", "worker", "--json", *args],
                            env=settings_env(settings), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_cli(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinstream", *args], env=settings_env(settings),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def wait_until(condition: Callable[[], object], timeout_s: float, what: str,
               interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def index_of(settings) -> VectorIndex:
    """The live version of the test's index (after a worker created it)."""
    return VectorIndex.live(connect(settings.redis.url), settings.redis.index)


def count(settings) -> int:
    client = connect(settings.redis.url)
    if VectorIndex.live_version(client, settings.redis.index) is None:
        return 0
    return VectorIndex.live(client, settings.redis.index).count()


def committed(settings, group: str | None = None) -> dict:
    admin = make_admin(settings.kafka)
    try:
        return group_offsets(admin, group or settings.kafka.group)
    finally:
        admin.close()


def topic_records(settings, topic: str | None = None) -> list:
    return list(read_all(settings.kafka, topic or settings.kafka.topic))
