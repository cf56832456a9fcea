"""Sharded indexes on a real 3-master Redis Cluster started from the same Redis 8 binary."""

import json
import os

import pytest
from redis.cluster import RedisCluster

from index import layout
from index.store import VectorIndex, connect
from index.versions import drop_version, list_versions
from tests.index_data import card, clustered, exact_top_k
from twinstream.cli import main
from twinstream.errors import ConfigError
from twinstream.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration
DIM = 32


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster"), masters=3) as running:
        pids = [node.pid for node in running.nodes]
        yield running
    assert not [pid for pid in pids if _alive(pid)], "cluster nodes outlived the cluster"


@pytest.fixture(scope="module")
def sharded(cluster):
    """A 4-shard float32 index of 1,500 clustered vectors on the cluster."""
    client = connect(cluster.url)
    data, labels = clustered(1500, DIM, clusters=12, seed=11)
    index = VectorIndex.for_model(client, "sharded", card("s1", DIM), "noquant", shards=4)
    index.upsert([(f"p{i:04d}", v, {"label": f"c{labels[i]}", "n": i})
                  for i, v in enumerate(data)])
    return index, data, labels


def test_connect_finds_the_cluster(cluster):
    client = connect(cluster.url)
    assert isinstance(client, RedisCluster)
    assert len(client.get_primaries()) == 3
    explicit = connect(cluster.url.replace("redis://", "redis+cluster://"))
    assert isinstance(explicit, RedisCluster)


def test_cluster_scheme_insists_on_a_cluster(stack):
    with pytest.raises(ConfigError, match="not a Redis Cluster node"):
        connect(stack.redis_url.replace("redis://", "redis+cluster://"))


def test_shards_spread_over_the_masters_and_ids_route_to_one_shard(sharded):
    index, _, _ = sharded
    counts = index.shard_counts()
    assert sum(counts) == index.count() == 1500 and min(counts) > 250, counts
    owners = {index.client.get_node_from_key(key).port for key in index.keys}
    assert len(owners) >= 2, "all shards landed on one master"
    assert all(index.exists(f"p{i:04d}") for i in range(0, 1500, 97))


def test_fan_out_search_merges_the_true_top_k(sharded):
    index, data, _ = sharded
    for i in (3, 500, 1499):
        query = data[i]
        truth = [f"p{j:04d}" for j in exact_top_k(data, query, 10)]
        assert [h.id for h in index.search(query, k=10, exact=True)] == truth
        approximate = {h.id for h in index.search(query, k=10)}
        assert len(approximate & set(truth)) >= 9
        assert [h.id for h in index.search_by_id(f"p{i:04d}", k=5, exact=True)] == [
            t for t in truth if t != f"p{i:04d}"][:5]


def test_filters_and_deletes_on_shards(sharded):
    index, data, labels = sharded
    hits = index.search(data[0], k=40, filter='.label == "c3" and .n < 700', exact=True)
    expected = {f"p{i:04d}" for i in range(700) if labels[i] == 3}
    assert {h.id for h in hits} <= expected and len(hits) == min(40, len(expected))
    victims = [f"p{i:04d}" for i in range(1400, 1500)]
    assert index.delete(victims) == 100
    assert index.count() == 1400 and not index.exists("p1450")
    assert index.upsert([(v, data[int(v[1:])], {"n": int(v[1:])}) for v in victims]) == 100
    assert index.count() == 1500


def test_versions_promote_and_drop_on_the_cluster(cluster):
    client = connect(cluster.url)
    data, _ = clustered(200, DIM, seed=12)
    for version in ("a1", "a2"):
        index = VectorIndex.for_model(client, "versioned", card(version, DIM), shards=3)
        index.upsert([(f"x{i}", v, {}) for i, v in enumerate(data)])
    VectorIndex.promote(client, "versioned", "a2")
    assert VectorIndex.live(client, "versioned").info.version == "a2"
    assert [(v.version, v.live, v.shards, v.count) for v in list_versions(client, "versioned")] \
        == [("a1", False, 3, 200), ("a2", True, 3, 200)]
    assert drop_version(client, "versioned", "a1") == 200
    assert not any(client.exists(key) for key in layout.shard_keys("versioned", "a1", 3))


def test_cli_lists_and_queries_the_sharded_index(sharded, cluster, capsys):
    _, data, _ = sharded
    assert main(["index", "list", "--redis-url", cluster.url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["versions"]
    assert {"name": "sharded", "version": "s1", "shards": 4, "count": 1500}.items() <= next(
        v for v in listed if v["name"] == "sharded").items()
    assert main(["query", "--id", "p0007", "-k", "3", "--index", "sharded", "--exact",
                 "--redis-url", cluster.url, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    truth = [f"p{j:04d}" for j in exact_top_k(data, data[7], 4) if j != 7][:3]
    assert [h["id"] for h in hits] == truth
