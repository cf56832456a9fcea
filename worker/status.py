"""``twinstream status``: where the stream stands, gathered from the broker and Redis.

- lag per partition of the workers' group (true end offsets, see ``worker.topics``), and of any
  re-index group (``<group>.reindex.<version>``) still around;
- the workers alive, from their heartbeat keys in Redis (``worker.heartbeat``): the broker's own
  member list needs DescribeGroups, which tansu cannot answer;
- the index: its live version and element count (and the count of a re-index version);
- the dead-letter topic: letters in it, and how many were not replayed yet.

Each part is gathered on its own: a broker that is down still leaves the Redis part readable.
"""

from __future__ import annotations

from kafka.errors import KafkaError

from index.store import IndexInfo, VectorIndex, connect
from twinstream.errors import TwinstreamError
from twinstream.settings import Settings
from worker.dlq import replay_group
from worker.heartbeat import list_workers
from worker.kafka_io import make_admin
from worker.topics import end_offsets, group_offsets, lag, partitions, reader


def reindex_group(group: str, version: str) -> str:
    return f"{group}.reindex.{version}"


def _reindex_groups(settings: Settings) -> list[str]:
    admin = make_admin(settings.kafka)
    try:
        listed = admin.list_groups()
    finally:
        admin.close()
    prefix = reindex_group(settings.kafka.group, "")
    names = [g.get("group_id") if isinstance(g, dict) else g[0] for g in listed]
    return sorted(n for n in names if n and n.startswith(prefix))


def dead_letter_depth(settings: Settings) -> dict:
    consumer = reader(settings.kafka)
    admin = make_admin(settings.kafka)
    try:
        tps = partitions(consumer, settings.kafka.dlq_topic)
        ends = end_offsets(consumer, tps)
        replayed = group_offsets(admin, replay_group(settings.kafka))
    finally:
        consumer.close(autocommit=False)
        admin.close()
    total = sum(ends.values())
    done = sum(min(replayed.get(tp, 0), ends[tp]) for tp in tps)
    return {"topic": settings.kafka.dlq_topic, "total": total, "replayed": done,
            "pending": total - done}


def gather(settings: Settings) -> dict:
    out: dict = {"topic": settings.kafka.topic, "group": settings.kafka.group,
                 "index": settings.redis.index, "errors": {}}
    reindexing: list[str] = []
    try:
        out["lag"] = lag(settings.kafka, settings.kafka.group)
        reindexing = _reindex_groups(settings)
        out["reindex"] = [lag(settings.kafka, g) for g in reindexing]
        out["dead_letters"] = dead_letter_depth(settings)
    except (TwinstreamError, KafkaError) as exc:
        out["errors"]["kafka"] = str(exc)
    try:
        client = connect(settings.redis.url)
        out["workers"] = list_workers(client, settings.kafka.group)
        live = VectorIndex.live_version(client, settings.redis.index)
        versions = {}
        if live is not None:
            versions[live] = VectorIndex.live(client, settings.redis.index).count()
        for group in reindexing:
            version = group.rsplit(".", 1)[-1]
            # count() reads only the version's vector set: no model card needed for it
            versions[version] = VectorIndex(client, IndexInfo(settings.redis.index, version,
                                                               0)).count()
        out["index_versions"] = [{"version": v, "count": n, "live": v == live}
                                 for v, n in versions.items()]
    except TwinstreamError as exc:
        out["errors"]["redis"] = str(exc)
    return out


def render(status: dict) -> str:
    """The human-readable view of ``gather``'s result."""
    lines = [f"topic {status['topic']}  group {status['group']}  index {status['index']}"]
    if "lag" in status:
        lag_ = status["lag"]
        lines.append(f"lag {lag_['lag']} of {lag_['total']} records")
        lines.append("  partition      end  committed   lag")
        for row in lag_["partitions"]:
            committed = "-" if row["committed"] is None else row["committed"]
            lines.append(f"  {row['partition']:9d} {row['end']:8d} {committed!s:>10} "
                         f"{row['lag']:5d}")
    for r in status.get("reindex", []):
        lines.append(f"re-index group {r['group']}: lag {r['lag']} of {r['total']}")
    if "workers" in status:
        lines.append(f"workers alive: {len(status['workers'])}")
        for w in status["workers"]:
            health = w.get("health", {}).get("status", "?")
            rec = w.get("records", {})
            lines.append(
                f"  {w.get('worker')}  {w.get('mode')}  {w.get('provider', '?')}  partitions "
                f"{','.join(map(str, w.get('partitions', []))) or _unassigned(w)}  {health}  "
                f"indexed {rec.get('indexed', 0)}  dead {rec.get('dead_lettered', 0)}  "
                f"seen {w.get('seen_s_ago')}s ago")
            for name, problem in w.get("health", {}).get("failing", {}).items():
                lines.append(f"      {name} failing for {problem['for_s']}s: {problem['error']}")
    for v in status.get("index_versions", []):
        lines.append(f"index version {v['version']}: {v['count']} items"
                     + ("  (live)" if v["live"] else ""))
    if not status.get("index_versions") and "workers" in status:
        lines.append("index: no version yet (start a worker)")
    if "dead_letters" in status:
        d = status["dead_letters"]
        lines.append(f"dead letters in {d['topic']}: {d['total']} ({d['pending']} not replayed)")
    for part, error in status["errors"].items():
        lines.append(f"{part}: unavailable: {error}")
    return "\n".join(lines)


def _unassigned(worker: dict) -> str:
    """'-', with for how long when the worker says (a group that never assigns shows here)."""
    seconds = worker.get("unassigned_for_s")
    return f"- (none for {seconds:.0f}s)" if seconds else "-"
