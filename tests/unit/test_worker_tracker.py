"""Which offsets a worker may commit (pure: fake records, no broker)."""

from collections import namedtuple

from kafka import TopicPartition

from worker.tracker import OffsetTracker

Record = namedtuple("Record", "topic partition offset")
P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def recs(partition, *offsets):
    return [Record("t", partition, o) for o in offsets]


def test_commits_up_to_the_last_of_an_unbroken_run_of_finished_records():
    t = OffsetTracker()
    t.read(recs(0, 10, 11, 12, 13))
    t.finished(recs(0, 10, 11), t.generation)
    assert t.to_commit() == {P0: 12}  # the position after 11: 12 and 13 are not done
    t.finished(recs(0, 13), t.generation)
    assert t.to_commit() == {P0: 12}  # 12 still missing: 13 must wait for it
    t.finished(recs(0, 12), t.generation)
    assert t.to_commit() == {P0: 14}


def test_partitions_are_independent_and_committed_positions_are_not_repeated():
    t = OffsetTracker()
    t.read(recs(0, 0, 1) + recs(1, 5))
    t.finished(recs(1, 5), t.generation)
    assert t.to_commit() == {P1: 6}
    t.committed({P1: 6})
    assert t.to_commit() == {}
    t.finished(recs(0, 0, 1), t.generation)
    assert t.to_commit() == {P0: 2}
    assert t.position(P1) == 6 and t.in_flight() == 0


def test_a_rebalance_makes_batches_of_the_old_generation_count_for_nothing():
    t = OffsetTracker()
    t.read(recs(0, 0, 1, 2))
    old = t.generation
    t.reset()  # partitions revoked and assigned again: the consumer re-reads from the commit
    t.finished(recs(0, 0, 1, 2), old)
    assert t.to_commit() == {} and t.in_flight() == 0
    t.read(recs(0, 0, 1, 2))
    t.finished(recs(0, 0, 1, 2), t.generation)
    assert t.to_commit() == {P0: 3}


def test_unfinished_records_stay_in_flight():
    t = OffsetTracker()
    t.read(recs(0, 0, 1, 2))
    t.finished(recs(0, 0), t.generation)
    assert t.in_flight() == 2
