"""Does the embedded broker still wedge a group whose leader leaves while it re-forms?

The repro of docs/notes/group-wedge.md with plain kafka-python consumers and no twinstream code in
the group: two members form a group, the follower leaves, then the leader; a newcomer tries to
join. Then the same with the leader closing the way our workers do (worker/membership.py).
Prints how long the newcomer waited for partitions in each case (``never`` = not within the
limit). When the first line stops saying ``never``, the broker is fixed and the work-around can
go. About a minute.

    .venv/bin/python bench/tansu_group_wedge.py
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twinstream.settings import load_settings  # noqa: E402
from twinstream.stack import LocalStack  # noqa: E402
from worker.kafka_io import ensure_topics, make_consumer  # noqa: E402
from worker.membership import close_consumer, is_leader  # noqa: E402


def _join(consumers, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        for c in consumers:
            c.poll(timeout_ms=50)
        if all(c.assignment() for c in consumers) \
                and sum(len(c.assignment()) for c in consumers) == 4:
            return time.monotonic() - start
    return None


def newcomer_wait(settings, close) -> float | None:
    group = f"wedge-{uuid.uuid4().hex[:8]}"
    pair = []
    for _ in range(2):
        pair.append(make_consumer(settings.kafka, group=group))
        pair[-1].subscribe([settings.kafka.topic])
        if _join(pair, 40) is None:
            raise SystemExit("the first two members never formed the group")
    leader = next(c for c in pair if is_leader(c))
    next(c for c in pair if c is not leader).close(autocommit=False)
    close(leader)
    newcomer = make_consumer(settings.kafka, group=group)
    newcomer.subscribe([settings.kafka.topic])
    try:
        return _join([newcomer], 3 * settings.kafka.session_timeout_ms / 1000 + 6)
    finally:
        newcomer.close(autocommit=False)


def main() -> None:
    with LocalStack(redis_url="unused://") as stack:
        s = load_settings({"TWINSTREAM_KAFKA_BOOTSTRAP": stack.kafka_bootstrap})
        s = replace(s, kafka=replace(s.kafka, topic="wedge", partitions=4,
                                     session_timeout_ms=6000))
        ensure_topics(s.kafka)
        for label, close in (("leader sends LeaveGroup (plain kafka-python)",
                              lambda c: c.close(autocommit=False)),
                             ("leader closes without it (worker/membership.py)",
                              close_consumer)):
            waited = newcomer_wait(s, close)
            print(f"{label}: newcomer assigned after "
                  f"{'never' if waited is None else f'{waited:.1f} s'}", flush=True)


if __name__ == "__main__":
    main()
