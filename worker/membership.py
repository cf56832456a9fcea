"""Consumer-group membership that survives the embedded broker's leader bug.

tansu (the Kafka-protocol broker of the ``local`` extra, v0.6.0) keeps a departed member as the
group's leader when the leader sends LeaveGroup while the group is re-forming (another member
has just left or joined). Every member that joins afterwards is told to wait for that leader's
assignment, which never comes: the group is wedged for good, its committed offsets with it
(``docs/notes/group-wedge.md`` has the captured exchange and the broker code). A scale-down from
two workers to one hits it whenever the follower's LeaveGroup lands first; a rolling restart hits
it whenever the new worker joins before the old leader leaves.

The work-around: the member that was elected leader in its last completed join closes *without*
LeaveGroup. The broker then removes it when its session times out, which is the path that does
clear the leader, so the group re-forms around whoever is left. Followers still leave at once.
Cost: when the leader stops cleanly its partitions move after ``kafka.session_timeout_ms``
instead of at once (a crash costs the same on any broker). Apache Kafka does not need this and
is not harmed by it.
"""

from __future__ import annotations

from kafka import KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.base import MemberState


class LeaderTrackingRange(RangePartitionAssignor):
    """Kafka's range assignor that also remembers whether this member was the group's leader in
    the last generation it completed (only the leader runs ``assign``; every member gets
    ``on_assignment`` once the generation is formed)."""

    def __init__(self):
        self._assigned_this_round = False
        self.leader = False

    def assign(self, cluster, members):
        self._assigned_this_round = True
        return RangePartitionAssignor.assign(cluster, members)

    def on_assignment(self, assignment, generation):
        self.leader, self._assigned_this_round = self._assigned_this_round, False


def _tracker(consumer: KafkaConsumer) -> LeaderTrackingRange | None:
    for assignor in consumer.config.get("partition_assignment_strategy", ()):
        if isinstance(assignor, LeaderTrackingRange):
            return assignor
    return None


def is_leader(consumer: KafkaConsumer) -> bool:
    """Whether this consumer was elected leader in the last generation it completed."""
    tracker = _tracker(consumer)
    return tracker is not None and tracker.leader


def close_consumer(consumer: KafkaConsumer, timeout_ms: int = 10_000) -> bool:
    """Close ``consumer``; a leader does not send LeaveGroup (see the module docstring).

    Returns whether LeaveGroup was sent. Offsets are not auto-committed: the worker commits
    exactly what it wrote before it closes.
    """
    leave = not is_leader(consumer)
    if not leave:
        # kafka-python sends LeaveGroup from close() unless the member is unjoined; it has no
        # public switch for this, so mark it unjoined (the generation is dropped anyway).
        consumer._coordinator.state = MemberState.UNJOINED
    consumer.close(autocommit=False, timeout_ms=timeout_ms)
    return leave


class _FinishedJoin:
    """A join attempt that finished while nobody was waiting for it, shown to kafka-python as
    still in flight so that its result is taken instead of thrown away.

    kafka-python 3.0.12 keeps the JoinGroup/SyncGroup attempt of a ``poll`` that timed out and
    awaits it again on the next ``poll``, but only while it runs: one that finished between two
    polls is replaced by a new JoinGroup. The broker answers a JoinGroup after its join delay
    (3 s on tansu), so a member that polls with short timeouts and does other work in between
    (two consumers polled in turn; a worker whose pipeline is full calls ``poll(0)``) rejoins
    for ever and the group never settles.
    """

    is_done = False  # read once by the join loop, which then awaits this object

    def __init__(self, finished):
        self._finished = finished

    def add_callback(self, fn, *args, **kwargs):
        return self._finished.add_callback(fn, *args, **kwargs)

    def add_errback(self, fn, *args, **kwargs):
        return self._finished.add_errback(fn, *args, **kwargs)

    def __await__(self):
        return self._finished.__await__()


def keep_finished_joins(consumer: KafkaConsumer) -> None:
    """Make ``consumer`` take the result of a join that finished between two polls (see
    :class:`_FinishedJoin`)."""
    coordinator = consumer._coordinator
    join_group_async = getattr(coordinator, "join_group_async", None)
    if join_group_async is None or not hasattr(coordinator, "_join_task"):
        return  # another kafka-python: its join loop is not the one this mends

    async def join_keeping_finished(timeout_ms=None):
        task = coordinator._join_task
        if task is not None and task.is_done:  # the loop clears it whenever it takes a result
            coordinator._join_task = _FinishedJoin(task)
        return await join_group_async(timeout_ms=timeout_ms)

    coordinator.join_group_async = join_keeping_finished
