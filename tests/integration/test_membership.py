"""Consumer-group membership across restarts and scale changes, on the real embedded broker.

The broker keeps a departed leader when the leader leaves a re-forming group (see
``worker/membership.py``; ``bench/tansu_group_wedge.py`` shows the wedge itself with plain
kafka-python consumers). These tests show that a leader closing our way does not wedge the group,
and that worker pools restarted 2 -> 1 -> 2 -> 2 on one group each own every partition within a
bound.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from kafka import KafkaConsumer

from index.store import connect
from tests.integration.worker_support import fast, wait_until, worker_process
from worker.heartbeat import list_workers
from worker.kafka_io import ensure_topics, make_consumer
from worker.membership import close_consumer, is_leader

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _join(consumers: list[KafkaConsumer], timeout_s: float) -> float | None:
    """Poll until every consumer owns partitions and together all four; seconds, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        for c in consumers:
            c.poll(timeout_ms=50)
        if all(c.assignment() for c in consumers) \
                and sum(len(c.assignment()) for c in consumers) == 4:
            return time.monotonic() - start
    return None


def _pair_then_newcomer(settings, close) -> float | None:
    """Two members own the group, the follower leaves, then the leader (``close``); a newcomer
    then tries to join: seconds until it owns the partitions, or None."""
    ensure_topics(settings.kafka)
    group = f"members-{uuid.uuid4().hex[:8]}"
    pair = []
    for _ in range(2):  # one after the other: two first joins at once can take long to settle
        pair.append(make_consumer(settings.kafka, group=group))
        pair[-1].subscribe([settings.kafka.topic])
        assert _join(pair, 40) is not None, "the first two members never formed the group"
    leader = [c for c in pair if is_leader(c)]
    assert len(leader) == 1  # exactly one of them ran the assignment
    follower = next(c for c in pair if c is not leader[0])
    follower.close(autocommit=False)  # its LeaveGroup turns the group back to forming...
    close(leader[0])  # ...and the leader goes while it re-forms
    newcomer = make_consumer(settings.kafka, group=group)
    newcomer.subscribe([settings.kafka.topic])
    try:
        return _join([newcomer], 3 * settings.kafka.session_timeout_ms / 1000 + 6)
    finally:
        newcomer.close(autocommit=False)


def test_a_join_that_finishes_between_two_short_polls_is_kept_not_sent_again(settings):
    """A worker whose pipeline is full calls ``poll(0)`` and writes in between: the broker's
    answer to JoinGroup (3 s later on tansu) lands while nobody waits. kafka-python 3.0.12 then
    sent a new JoinGroup, for ever; the member must own the partitions instead."""
    ensure_topics(settings.kafka)
    consumer = make_consumer(settings.kafka, group=f"members-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([settings.kafka.topic])
    joins = 0  # attempts that completed JoinGroup and SyncGroup
    original = consumer._coordinator._do_join_and_sync_async

    async def counting(*args, **kwargs):
        nonlocal joins
        assignment = await original(*args, **kwargs)
        joins += 1
        return assignment

    consumer._coordinator._do_join_and_sync_async = counting
    try:
        start = time.monotonic()
        while not consumer.assignment() and time.monotonic() - start < 30:
            consumer.poll(timeout_ms=0)
            time.sleep(0.2)  # the batch being written
        assert len(consumer.assignment()) == settings.kafka.partitions
        assert joins == 1, f"{joins} completed joins for one member"
    finally:
        consumer.close(autocommit=False)


def test_a_leader_that_closes_without_leaving_does_not_wedge_the_group(settings):
    waited = _pair_then_newcomer(settings, close_consumer)
    # The departed leader's session expires, the newcomer's next join makes it the leader.
    session_s = settings.kafka.session_timeout_ms / 1000
    assert waited is not None and waited < 2 * session_s + 6, waited


def _owned_by(client, group: str, processes: int, partitions: int) -> bool:
    live = [w for w in list_workers(client, group) if w["partitions"]]
    return len(live) == processes and sum(len(w["partitions"]) for w in live) == partitions


def test_pools_restarted_2_1_2_2_each_own_every_partition_within_a_bound(model_settings):
    """Scale-down, scale-up and a restart at equal size, each after a clean SIGTERM of the
    previous pool, as an autoscaler does. Bound: the first assignment comes within two session
    timeouts (the old leader's session has to expire) plus the pool's start (~10 s here)."""
    s = fast(model_settings)
    client = connect(s.redis.url)
    bound_s = 2 * s.kafka.session_timeout_ms / 1000 + 15
    waits = []
    for processes in (2, 1, 2, 2):
        proc = worker_process(s, "--processes", str(processes))
        started = time.monotonic()
        try:
            wait_until(lambda n=processes: _owned_by(client, s.kafka.group, n,
                                                     s.kafka.partitions),
                       bound_s, f"{processes} worker(s) owning all partitions", interval_s=0.2)
            waits.append(round(time.monotonic() - started, 1))
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    print(f"seconds to own every partition, pools of 2, 1, 2, 2: {waits}")
    assert len(waits) == 4
