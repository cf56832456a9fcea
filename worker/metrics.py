"""The worker's Prometheus metrics, in a registry of its own (several workers may share a
process in tests, and a registry per worker keeps their numbers apart)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STEPS = ("decode", "embed", "write", "durable")


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter("twinstream_worker_records", "Records finished, by outcome "
                               "(indexed, deleted, dead_lettered).", ["outcome"], registry=r)
        self.dead_letters = Counter("twinstream_worker_dead_letters",
                                    "Records sent to the dead-letter topic, by failed stage.",
                                    ["stage"], registry=r)
        self.batch_size = Histogram("twinstream_worker_batch_size", "Records per micro-batch.",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.step_seconds = {
            step: Histogram(f"twinstream_worker_{step}_seconds",
                            f"Seconds a batch spends in the {step} step.",
                            buckets=SECONDS_BUCKETS, registry=r)
            for step in STEPS}
        self.lag = Gauge("twinstream_worker_consumer_lag",
                         "Records after the committed offset, per assigned partition.",
                         ["topic", "partition"], registry=r)
        self.retries = Counter("twinstream_worker_retries",
                               "Failed attempts at writing to Redis or the dead-letter topic.",
                               ["target"], registry=r)
        self.in_flight = Gauge("twinstream_worker_in_flight_batches",
                               "Batches read but not yet committed.", registry=r)
        self.healthy = Gauge("twinstream_worker_healthy",
                             "1 while Redis and Kafka answer, 0 while retrying.", registry=r)
        self.healthy.set(1)
        self._last_commit = time.monotonic()
        commit_age = Gauge("twinstream_worker_last_commit_age_seconds",
                           "Seconds since this worker last committed offsets.", registry=r)
        commit_age.set_function(lambda: time.monotonic() - self._last_commit)

    def track_uncommitted(self, in_flight, written) -> None:
        """Gauges read at scrape time: records read but not written, written but not
        committed (what a crash now would make the group re-deliver)."""
        gauge = Gauge("twinstream_worker_uncommitted_records",
                      "Records not committed yet: in_flight (read, not yet written) or written "
                      "(in Redis or the dead-letter topic, offset not committed yet).",
                      ["state"], registry=self.registry)
        gauge.labels("in_flight").set_function(in_flight)
        gauge.labels("written").set_function(written)

    def committed(self) -> None:
        self._last_commit = time.monotonic()

    def observe_step(self, step: str, seconds: float) -> None:
        if step in self.step_seconds:
            self.step_seconds[step].observe(seconds)
