"""A Redis that cannot serve the index, or keys that are not ours: clear errors, nothing damaged."""

import numpy as np
import pytest

from index.store import VectorIndex, connect
from tests.index_data import card, clustered
from twinstream.errors import ConfigError, ServiceUnavailable
from twinstream.stack import free_port, redis_process

pytestmark = pytest.mark.integration
DEBIAN_REDIS = "/usr/bin/redis-server"  # 7.0: no vector sets (installed by make test)


def test_unreachable_redis():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ServiceUnavailable, match=f"cannot reach Redis at {url}"):
        connect(url, timeout_s=1)
    with pytest.raises(ServiceUnavailable, match="no Redis configured"):
        connect("")
    with pytest.raises(ServiceUnavailable, match="cannot reach"):
        connect("http://not-a-redis-url")


def test_password_missing_or_wrong(tmp_path):
    proc = redis_process(tmp_path, password="s3cret").start()
    try:
        with pytest.raises(ServiceUnavailable, match="needs a password") as err:
            connect(f"redis://127.0.0.1:{proc.port}/0")
        with pytest.raises(ServiceUnavailable, match="refused the credentials") as err:
            connect(f"redis://:wrong@127.0.0.1:{proc.port}/0")
        assert "wrong" not in err.value.message  # the password is never echoed
        client = connect(f"redis://:s3cret@127.0.0.1:{proc.port}/0")
        index = VectorIndex.for_model(client, "auth", card(dim=8))
        assert index.upsert([("a", np.ones(8), {})]) == 1
    finally:
        proc.stop()


def test_redis_without_vector_sets(tmp_path):
    proc = redis_process(tmp_path, binary=DEBIAN_REDIS).start()
    try:
        with pytest.raises(ServiceUnavailable, match=r"Redis 7\.0.* has no vector sets"):
            connect(f"redis://127.0.0.1:{proc.port}/0")
    finally:
        proc.stop()


def test_losing_redis_mid_use_is_service_unavailable(tmp_path):
    proc = redis_process(tmp_path).start()
    client = connect(f"redis://127.0.0.1:{proc.port}/0", timeout_s=1)
    index = VectorIndex.for_model(client, "lost", card(dim=8))
    index.upsert([("a", np.ones(8), {})])
    proc.kill()
    with pytest.raises(ServiceUnavailable, match="lost the connection"):
        index.search(np.ones(8), k=1)
    with pytest.raises(ServiceUnavailable, match="lost the connection"):
        index.upsert([("b", np.ones(8), {})])


def test_a_foreign_key_under_the_index_name_is_named_and_left_alone(client, name):
    vset_key = f"twinstream:{{{name}}}:m1:vset"
    client.set(vset_key, "somebody else's data")
    with pytest.raises(ConfigError, match=rf"{vset_key} holds a string, not a vectorset"):
        VectorIndex.for_model(client, name, card(dim=8))
    assert client.get(vset_key) == b"somebody else's data"

    other = f"{name}-alias"
    client.hset(f"twinstream:{{{other}}}:alias", "x", "y")
    with pytest.raises(ConfigError, match="alias holds a hash, not a string"):
        VectorIndex.live(client, other)
    assert client.hgetall(f"twinstream:{{{other}}}:alias") == {b"x": b"y"}


def test_a_key_replaced_behind_our_back_is_reported_on_use(client, name):
    index = VectorIndex.for_model(client, name, card(dim=8))
    data, _ = clustered(20, 8)
    index.upsert([(f"i{i}", v, {}) for i, v in enumerate(data)])
    client.delete(index.vset)
    client.lpush(index.vset, "intruder")
    with pytest.raises(ConfigError, match="holds a list, not a vectorset"):
        index.search(data[0], k=3)
    with pytest.raises(ConfigError, match="holds a list"):
        index.upsert([("i0", data[0], {})])
    assert client.lrange(index.vset, 0, -1) == [b"intruder"]
