"""Index versions on real Redis 8: creation, the live alias, atomic promote under load, drop."""

import threading

import numpy as np
import pytest

from index.store import VectorIndex, connect
from index.versions import drop_version, list_indexes, list_versions, stats
from tests.index_data import card, clustered
from twinstream.errors import IndexMismatchError, InputError, NotFoundError

pytestmark = pytest.mark.integration
DIM = 16


def fill(index, n, seed):
    data, labels = clustered(n, index.info.dim, seed=seed)
    index.upsert([(f"id{i}", v, {"label": f"c{labels[i]}", "model_version": index.info.version})
                  for i, v in enumerate(data)])
    return data


def test_first_version_is_live_later_ones_wait_for_promote(client, name):
    with pytest.raises(NotFoundError, match="does not exist yet"):
        VectorIndex.live(client, name)
    v1 = VectorIndex.for_model(client, name, card("v1", DIM, threshold=0.7))
    fill(v1, 50, seed=1)
    v2 = VectorIndex.for_model(client, name, card("v2", DIM, threshold=0.9))
    fill(v2, 80, seed=2)
    live = VectorIndex.live(client, name)
    assert live.info.version == "v1" and live.info.threshold == 0.7 and live.count() == 50
    VectorIndex.promote(client, name, "v2")
    live = VectorIndex.live(client, name)
    assert live.info.version == "v2" and live.info.threshold == 0.9 and live.count() == 80
    live.check_model(card("v2", DIM))
    with pytest.raises(IndexMismatchError, match="another model"):
        live.check_model(card("v1", DIM))
    with pytest.raises(NotFoundError, match="no version v3"):
        VectorIndex.promote(client, name, "v3")
    assert VectorIndex.live_version(client, name) == "v2"

    listed = list_versions(client, name)
    assert [(v.version, v.live, v.count) for v in listed] == [("v1", False, 50), ("v2", True, 80)]
    assert name in list_indexes(client)
    described = stats(live)
    assert described["count"] == 80 and described["live"] and described["dim"] == DIM
    assert described["memory_bytes"] > 80 * DIM and described["bytes_per_vector"] > DIM


def test_writes_from_another_model_or_dimension_are_refused(client, name):
    index = VectorIndex.for_model(client, name, card("v1", DIM))
    fill(index, 20, seed=3)
    with pytest.raises(IndexMismatchError, match="has dimension 16, the model gives 32"):
        VectorIndex.for_model(client, name, card("v1", 32))
    with pytest.raises(IndexMismatchError, match="another model"):
        index.upsert([("x", np.ones(DIM), {"model_version": "v9"})])
    with pytest.raises(IndexMismatchError, match="dimension 32"):
        index.upsert([("x", np.ones(32), {})])
    assert index.count() == 20 and not index.exists("x")


def test_drop_refuses_the_live_version_unless_forced(client, name):
    for version in ("v1", "v2"):
        fill(VectorIndex.for_model(client, name, card(version, DIM)), 30, seed=4)
    with pytest.raises(InputError, match="is the live version"):
        drop_version(client, name, "v1")
    assert drop_version(client, name, "v2") == 30
    assert [v.version for v in list_versions(client, name)] == ["v1"]
    with pytest.raises(NotFoundError, match="no version v2"):
        drop_version(client, name, "v2")
    assert drop_version(client, name, "v1", force=True) == 30
    assert VectorIndex.live_version(client, name) is None
    assert name not in list_indexes(client)
    assert not client.keys(f"twinstream:{{{name}}}*")  # nothing left behind


def test_promote_is_atomic_for_readers_under_load(client, name, stack):
    """Readers resolve the alias and search while versions flip: every answer comes wholly from
    one version, and no read fails."""
    for version in ("va", "vb"):
        fill(VectorIndex.for_model(client, name, card(version, DIM)), 200, seed=5)
    query = clustered(1, DIM, seed=6)[0][0]
    stop, problems, answers = threading.Event(), [], []

    def reader():
        own = connect(stack.redis_url)
        while not stop.is_set():
            try:
                index = VectorIndex.live(own, name)
                versions = {h.attributes["model_version"] for h in index.search(query, k=10)}
                answers.append(versions)
                if versions != {index.info.version}:
                    problems.append(versions)
            except Exception as exc:  # any failure is a finding
                problems.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(60):
        VectorIndex.promote(client, name, "vb" if i % 2 == 0 else "va")
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert {v for a in answers for v in a} == {"va", "vb"}  # readers did see both versions
