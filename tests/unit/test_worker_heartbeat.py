"""The heartbeat publishes on its tick and at once when asked (after a rebalance)."""

import json
import threading
import time

from worker.heartbeat import Heartbeat


class RecordingClient:
    """Stands in for the Redis client: the heartbeat's only calls are SET and DEL."""

    def __init__(self):
        self.values: list[dict] = []
        self.deleted: list[str] = []
        self.changed = threading.Event()

    def set(self, key, value, ex):
        self.values.append(json.loads(value))
        self.changed.set()

    def delete(self, key):
        self.deleted.append(key)


def test_beat_soon_publishes_without_waiting_for_the_tick():
    client = RecordingClient()
    state = {"partitions": []}
    beat = Heartbeat(client, "k", lambda: dict(state), interval_s=60).start()
    try:
        assert client.values == [{"partitions": []}]  # start() publishes synchronously
        client.changed.clear()
        state["partitions"] = [0, 1]
        beat.beat_soon()
        assert client.changed.wait(5), "no beat within 5 s of beat_soon (tick is 60 s)"
        assert client.values[-1] == {"partitions": [0, 1]}
    finally:
        began = time.monotonic()
        beat.stop()
    assert time.monotonic() - began < 5 and client.deleted == ["k"]
