"""The streaming commands end to end on the real broker and Redis 8: ingest options, dead-letter
listing and replay, status, the model-version guard, re-indexing, the pool's restarts and a
broker that is not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace

import pytest

from index.store import VectorIndex, connect
from tests.imagegen import encode, gradient
from tests.integration.worker_support import (
    ThreadWorker,
    count,
    fast,
    good_image,
    image_record,
    index_of,
    publish,
    run_cli,
    wait_until,
    worker_process,
)
from twinstream.errors import IndexMismatchError
from twinstream.messages import content_id
from twinstream.runtime import Encoder
from twinstream.stack import free_port
from worker.heartbeat import list_workers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def other_model(onnx_model, tmp_path_factory):
    """The session model with one weight nudged and its card re-versioned by the exporter's own
    code: what a newly trained model looks like to the worker (a new version)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from export.card import read_card, save_atomic, with_card

    proto = onnx.load(str(onnx_model))
    weight = proto.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += np.float32(1e-3)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    carded, card = with_card(proto, read_card(proto, str(onnx_model)))
    assert card.version != read_card(onnx.load(str(onnx_model)), "").version
    return save_atomic(carded, tmp_path_factory.mktemp("model-b") / "model-b.onnx")


def test_ingest_labels_attributes_duplicates_and_by_reference(model_settings, tmp_path):
    s = fast(model_settings, uri_roots=str(tmp_path))
    for label, seed in (("cat", 1), ("dog", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / f"{label}.png").write_bytes(encode(gradient(seed=seed)))
    shutil.copy(tmp_path / "data" / "cat" / "cat.png", tmp_path / "data" / "dog" / "copy.png")
    big = tmp_path / "data" / "dog" / "big.png"
    big.write_bytes(encode(gradient(size=64, seed=3)))  # ~12 KB: above the inline limit below

    result = run_cli(s, "ingest", str(tmp_path / "data"), "--attr", "camera=door",
                     "--inline-max-bytes", "5000", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["published"], summary["skipped"], summary["failed"]) == (3, 1, 0)
    assert summary["by_reference"] == 1

    by_path = tmp_path / "data" / "cat" / "cat.png"
    result = run_cli(s, "ingest", str(by_path), "--id-from", "path", "--no-label-from-dir",
                     "--json")
    assert result.returncode == 0, result.stderr

    with ThreadWorker(s):
        wait_until(lambda: count(s) == 4, 60, "4 images indexed")
    index = index_of(s)
    hits = {h.id: h.attributes for h in index.search(index.vector(by_path.as_posix()), k=10)}
    cat = hits[content_id(by_path.read_bytes())]
    assert cat["label"] == "cat" and cat["camera"] == "door"
    assert hits[by_path.as_posix()].get("label") is None  # --no-label-from-dir
    assert hits[content_id(big.read_bytes())]["uri"] == str(big.resolve())

    result = run_cli(s, "ingest", str(tmp_path / "data"), "--no-recursive")
    assert result.returncode == 2 and "--recursive" in result.stderr


def test_dead_letters_list_replay_and_status(model_settings, tmp_path):
    s = fast(model_settings, uri_roots=str(tmp_path))
    late = tmp_path / "late.png"  # named by a record before it exists
    key, _, headers = image_record(b"", "late-image")
    publish(s, [(key, b"", [*headers, ("uri", str(late).encode())]),
                image_record(good_image(1))])
    with ThreadWorker(s) as running:
        wait_until(lambda: running.worker.stats.records == 2, 60, "both records handled")
        letters = json.loads(run_cli(s, "dlq", "list", "--json").stdout)
        assert letters["total"] == 1
        (letter,) = letters["letters"]
        assert letter["id"] == "late-image" and letter["stage"] == "fetch"
        assert "does not exist" in letter["reason"]

        # The heartbeat publishes asynchronously (at once after an assignment, then every 2 s).
        status = wait_until(lambda: (st := json.loads(run_cli(s, "status", "--json").stdout))
                            ["lag"]["lag"] == 0 and st["workers"]
                            and st["workers"][0]["partitions"] and st, 20,
                            "lag 0 and the worker's partitions in status")
        assert status["lag"]["total"] == 2 and not status["errors"]
        (w,) = status["workers"]
        assert w["worker"] == running.worker.worker_id and len(w["partitions"]) == 4
        assert status["dead_letters"] == {"topic": s.kafka.dlq_topic, "total": 1,
                                          "replayed": 0, "pending": 1}
        assert status["index_versions"][0]["count"] == 1

        late.write_bytes(encode(gradient(seed=9)))  # the fix
        replayed = json.loads(run_cli(s, "dlq", "replay", "--json").stdout)
        assert replayed["replayed"] == 1
        wait_until(lambda: index_of(s).exists("late-image"), 30, "the replayed image indexed")
        again = json.loads(run_cli(s, "dlq", "replay", "--json").stdout)
        assert again["replayed"] == 0  # the replay position moved past it

        result = run_cli(s, "delete", "late-image", "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["tombstones"] == 1
        wait_until(lambda: not index_of(s).exists("late-image"), 30, "the id deleted")
        text = run_cli(s, "status").stdout
        assert "dead letters" in text and "(0 not replayed)" in text


def test_model_guard_reindex_and_promotion(model_settings, other_model):
    s = fast(model_settings)
    publish(s, [image_record(good_image(i)) for i in range(30)])
    b = replace(s, model=replace(s.model, path=str(other_model)))
    version_b = Encoder(other_model).version

    with ThreadWorker(s) as old:
        wait_until(lambda: count(s) == 30, 60, "30 images indexed by model A")
        live = VectorIndex.live_version(connect(s.redis.url), s.redis.index)

        refused = run_cli(b, "worker", "--processes", "1")
        assert refused.returncode == 4, refused.stderr
        assert "is live on model version" in refused.stderr and "reindex" in refused.stderr

        result = run_cli(b, "reindex", "--exit-when-caught-up", "--processes", "1", "--json",
                         timeout=180)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["version"] == version_b and report["caught_up"]
        assert report["count"] == 30 and report["live_version"] == live
        client = connect(s.redis.url)
        assert VectorIndex.live_version(client, s.redis.index) == live  # old one still serves

        VectorIndex.promote(client, s.redis.index, version_b)
        wait_until(lambda: not old.thread.is_alive(), 20, "the old-model worker stopping")
    assert isinstance(old.error, IndexMismatchError)
    assert "promoted" in old.error.message
    assert index_of(s).count() == 30 and index_of(s).info.version == version_b


def test_pool_restarts_a_crashed_child(model_settings):
    s = fast(model_settings, processes=2)
    proc = worker_process(s, "--processes", "2")
    client = connect(s.redis.url)
    try:
        first = wait_until(lambda: {w["pid"] for w in list_workers(client, s.kafka.group)}
                           if len(list_workers(client, s.kafka.group)) == 2 else None,
                           60, "two worker processes")
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        client.delete(*[k for k in client.scan_iter(match="twinstream:workers:*")
                        if f":{{{s.kafka.group}}}:" in k.decode() and str(victim) in k.decode()])
        after = wait_until(lambda: (pids := {w["pid"] for w in list_workers(client,
                                                                             s.kafka.group)})
                           and len(pids) == 2 and victim not in pids and pids, 60,
                           "a restarted worker process")
        assert after & first  # the other child was left alone
        assert proc.poll() is None
        publish(s, [image_record(good_image(i)) for i in range(20)])
        wait_until(lambda: count(s) == 20, 60, "the pool still indexing")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "crashed" in err and "restarting" in err
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 0


def test_worker_with_no_broker_fails_with_a_clear_error(model_settings):
    s = replace(model_settings, kafka=replace(model_settings.kafka,
                                              bootstrap=f"127.0.0.1:{free_port()}"))
    result = run_cli(s, "worker", "--processes", "1")
    assert result.returncode == 69, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("twinstream: ")]
    assert errors == [f"twinstream: error: cannot reach Kafka at {s.kafka.bootstrap} "
                      "(KafkaTimeoutError); is the broker running and is "
                      "TWINSTREAM_KAFKA_BOOTSTRAP right?"]
    assert "Traceback" not in result.stderr
