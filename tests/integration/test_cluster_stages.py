"""Every stage on the local 3-master Redis Cluster (issue 14): a worker pool indexes into a
sharded index whose shards land on all three masters, ``status`` and ``dlq`` see it, ``reindex``
fills a new version and ``index promote`` switches to it, ``recognize`` answers, and the HTTP API
serves it."""

from __future__ import annotations

import json
import signal
import uuid
from dataclasses import replace

import pytest
from redis.crc import key_slot

from index import layout
from index.store import VectorIndex, connect
from tests.api.conftest import running_server
from tests.imagegen import hostile
from tests.integration.test_worker_commands import other_model  # noqa: F401 - a fixture
from tests.integration.worker_support import (
    fast,
    image_record,
    publish,
    run_cli,
    wait_until,
    worker_process,
)
from twinstream.messages import content_id
from twinstream.redis_cluster import CLUSTER_SLOTS, LocalRedisCluster
from twinstream.runtime import Encoder

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MASTERS, SHARDS = 3, 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalRedisCluster(tmp_path_factory.mktemp("stages-cluster"), masters=MASTERS) as running:
        yield running


def _master_of(key: str) -> int:
    """Which master serves ``key``: LocalRedisCluster gives node i an equal range of slots."""
    return key_slot(key.encode()) * MASTERS // CLUSTER_SLOTS


def _name_on_every_master(versions: list[str]) -> str:
    """An index name whose shards, for each version, land on all three masters (hash tags
    decide; the test asserts where the data really is)."""
    for _ in range(10_000):
        name = f"stages-{uuid.uuid4().hex[:8]}"
        if all({_master_of(k) for k in layout.shard_keys(name, v, SHARDS)} == set(range(MASTERS))
               for v in versions):
            return name
    raise AssertionError("no index name spreads over every master")


def _vectors_per_master(client, keys: list[str]) -> dict[int, int]:
    per_node: dict[int, int] = {}
    for key in keys:
        node = client.get_node_from_key(key)
        per_node[node.port] = per_node.get(node.port, 0) + int(client.execute_command("VCARD", key))
    return per_node


def test_pool_status_dlq_reindex_promote_recognize_and_api_on_a_cluster(
        model_settings, onnx_model, other_model, shapes_data, cluster):  # noqa: F811
    session_version = Encoder(onnx_model).version
    other_version = Encoder(other_model).version
    s = fast(model_settings, processes=2)
    s = replace(s, redis=replace(s.redis, url=cluster.url, shards=SHARDS, quant="noquant",
                                 index=_name_on_every_master([session_version, other_version])))
    paths = sorted(shapes_data.rglob("*.png"))[::5]  # 54 images, every class
    good = [(p, p.read_bytes()) for p in paths]
    bad = [image_record(data, f"bad-{name}") for name, data in list(hostile().items())[:3]]
    publish(s, [image_record(data, label=p.parent.name, source=p.name) for p, data in good] + bad)
    client = connect(s.redis.url)

    pool = worker_process(s, "--processes", "2")
    try:
        wait_until(lambda: VectorIndex.live_version(client, s.redis.index) is not None
                   and VectorIndex.live(client, s.redis.index).count() == len(good), 120,
                   "the pool indexing every good image into the cluster")
        index = VectorIndex.live(client, s.redis.index)
        per_master = _vectors_per_master(client, index.keys)
        assert sorted(per_master) == sorted(cluster.ports)  # shards on all three masters...
        assert all(n > 0 for n in per_master.values()), per_master  # ...each holding vectors

        status = wait_until(lambda: (st := json.loads(run_cli(s, "status", "--json").stdout))
                            and len([w for w in st["workers"] if w["partitions"]]) == 2
                            and st["lag"]["lag"] == 0 and st, 60,
                            "status: two workers with partitions, no lag")
        assert {"version": session_version, "count": len(good), "live": True} \
            in status["index_versions"]
        assert status["dead_letters"]["total"] == len(bad)
        letters = json.loads(run_cli(s, "dlq", "list", "--json").stdout)
        assert {letter["id"] for letter in letters["letters"]} == {
            k.decode() for k, _, _ in bad}

        b = replace(s, model=replace(s.model, path=str(other_model)))
        result = run_cli(b, "reindex", "--exit-when-caught-up", "--processes", "1", "--json",
                         timeout=240)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["version"] == other_version and report["count"] == len(good)
        new = VectorIndex.for_settings(client, b.redis, Encoder(other_model).card)
        assert all(n > 0 for n in _vectors_per_master(client, new.keys).values())
        promoted = run_cli(b, "index", "promote", other_version, "--json")
        assert promoted.returncode == 0, promoted.stderr
        assert VectorIndex.live_version(client, s.redis.index) == other_version
        assert pool.wait(60) == 4  # the old model's workers stop: their index was superseded
    finally:
        if pool.poll() is None:
            pool.send_signal(signal.SIGTERM)
            pool.wait(60)

    path, data = good[0]
    # Identities belong to a model version: after the promotion, enrol with the new model.
    enrolled = run_cli(b, "enroll", str(path), "--label", path.parent.name, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    recognized = run_cli(b, "recognize", str(path), "--json")
    assert recognized.returncode == 0, recognized.stderr
    answer = json.loads(recognized.stdout)
    assert answer["known"] and answer["label"] == path.parent.name

    with running_server(b, Encoder(other_model)) as api:
        ready = api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["index"]["count"] == len(good)
        r = api.client.post("/search", files={"image": ("q.png", data, "image/png")},
                            data={"k": "3"})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["id"] == content_id(data)
