"""Index versions: list them, describe one, drop one (promote lives in ``VectorIndex.promote``).

Every model that fills an index gets a version of its own, so re-embedding with a new model never
disturbs the version queries use; ``promote`` switches the alias atomically once the new version
is full, and ``drop`` frees an old one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from index import layout
from index.connection import Client, translate_errors
from index.store import VectorIndex, decode_hash, guard, info_from_meta
from twinstream.errors import InputError, NotFoundError

# Removes a version's metadata and registry entry unless it is live (or force is given, which
# also clears the alias): one atomic step, so a concurrent promote cannot point at a dropped
# version. Returns 1 done, 0 no such version, -1 it is live.
_DROP = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local live = redis.call('GET', KEYS[1])
if live == ARGV[1] then
  if ARGV[2] ~= '1' then return -1 end
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    live: bool
    count: int
    dim: int
    metric: str
    quant: str
    shards: int
    threshold: float | None
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


def list_indexes(client: Client) -> list[str]:
    with translate_errors("listing indexes"):
        return sorted(n.decode() for n in client.smembers(layout.INDEXES_KEY))


def list_versions(client: Client, name: str) -> list[VersionInfo]:
    """Every version of index ``name``, the oldest first."""
    live = VectorIndex.live_version(client, name)
    with guard(client, name):
        versions = sorted(v.decode() for v in client.smembers(layout.versions_key(name)))
        pipe = client.pipeline(transaction=False)
        for version in versions:
            pipe.hgetall(layout.meta_key(name, version))
        metas = [decode_hash(m) for m in pipe.execute()]
    out = []
    for version, meta in zip(versions, metas, strict=True):
        if not meta:
            continue  # dropped between the two reads
        meta.setdefault("version", version)
        index = VectorIndex(client, info_from_meta(name, meta))
        out.append(VersionInfo(name, version, version == live, index.count(), index.info.dim,
                               index.info.metric, index.info.quant, index.info.shards,
                               index.info.threshold, float(meta.get("created_at", 0))))
    return sorted(out, key=lambda v: (v.created_at, v.version))


def stats(index: VectorIndex) -> dict:
    """Counts, memory and graph parameters of one version."""
    info = index.info
    counts = index.shard_counts()
    with index.errors_during("stats"):
        pipe = index.client.pipeline(transaction=False)
        for key in index.keys:
            pipe.memory_usage(key, samples=0)
        pipe.hlen(index.thumbs)
        *memory, thumbnails = pipe.execute()
        graph = index.client.execute_command("VINFO", index.keys[0]) if counts[0] else None
    memory = [int(m or 0) for m in memory]
    total = sum(counts)
    graph = decode_hash(graph) if isinstance(graph, dict) else {}
    return {
        "name": info.name, "version": info.version,
        "live": VectorIndex.live_version(index.client, info.name) == info.version,
        "count": total, "shard_counts": counts, "dim": info.dim, "metric": info.metric,
        "quant": info.quant, "shards": info.shards, "threshold": info.threshold,
        "memory_bytes": sum(memory), "shard_memory_bytes": memory,
        "bytes_per_vector": round(sum(memory) / total, 1) if total else None,
        "thumbnails": int(thumbnails), "hnsw_m": int(graph["hnsw-m"]) if "hnsw-m" in graph
        else None,
    }


def drop_version(client: Client, name: str, version: str, force: bool = False) -> int:
    """Delete one version (its vectors and metadata); returns how many vectors it held.

    The live version is refused unless ``force`` (then the index has no live version until the
    next promote). Stop the workers that write to a version before dropping it: a write that
    arrives afterwards would recreate its vector set without metadata.
    """
    index = VectorIndex.open(client, name, version)
    held = index.count()
    keys = (layout.alias_key(name), layout.versions_key(name), layout.meta_key(name, version))
    with index.errors_during("drop"):
        done = client.eval(_DROP, 3, *keys, version, "1" if force else "0")
        if done == 0:
            raise NotFoundError(f"index {name!r} has no version {version}")
        if done == -1:
            raise InputError(f"version {version} is the live version of index {name!r}: promote "
                             "another version first (or pass --force to leave it without one)")
        pipe = client.pipeline(transaction=False)
        for key in index.keys:
            pipe.unlink(key)  # frees big vector sets in the background
        pipe.scard(layout.versions_key(name))
        remaining = pipe.execute()[-1]
        if not remaining:  # the last version: the name goes, with its thumbnails
            client.unlink(layout.thumbs_key(name))
            client.srem(layout.INDEXES_KEY, name)
    return held
