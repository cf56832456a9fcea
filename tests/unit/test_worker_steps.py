"""The worker's steps on fake records, without services: decoding hostile and unusual input,
per-id last-wins index operations, dead-letter headers, the pipeline's order and failures."""

from collections import namedtuple
from dataclasses import replace

import numpy as np
import pytest

from tests.imagegen import encode, gradient, hostile, unusual_but_valid
from twinstream.messages import ImageMessage
from twinstream.preprocess import Preprocessing
from twinstream.settings import WorkerSettings
from worker.batch import Batch, Delete, Item, Upsert, index_operations
from worker.decoder import Decoder
from worker.dlq import dead_letter_headers
from worker.embedder import Embedder
from worker.pipeline import Pipeline
from worker.pool import child_settings

Record = namedtuple("Record", "topic partition offset key value headers")
SPEC = Preprocessing(height=16, width=16)


def record(msg: ImageMessage, offset: int = 0) -> Record:
    key, value, headers = msg.to_record()
    return Record("images", 0, offset, key, value, headers)


def decode(messages, **settings) -> list[Item]:
    batch = Batch(1, [Item(record(m, i)) for i, m in enumerate(messages)])
    decoder = Decoder(SPEC, replace(WorkerSettings(), **settings))
    try:
        decoder(batch)
    finally:
        decoder.close()
    return batch.items


def test_unusual_but_valid_images_are_decoded_not_dead_lettered():
    items = decode([ImageMessage(id=name, data=data) for name, data in unusual_but_valid().items()])
    assert all(item.failure is None for item in items), [i.failure for i in items]
    assert all(item.array.shape == SPEC.shape and item.thumbnail for item in items)


def test_hostile_images_fail_at_decode_with_a_reason():
    items = decode([ImageMessage(id=name, data=data) for name, data in hostile().items()])
    for item in items:
        assert item.failure is not None and item.failure.stage == "decode"
        assert len(item.failure.reason) > 10 and item.array is None


def test_fetch_limits_and_uris(tmp_path):
    inside = tmp_path / "ok.png"
    inside.write_bytes(encode(gradient()))
    big = tmp_path / "big.png"
    big.write_bytes(encode(gradient(size=200)))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(encode(gradient()))
    link = tmp_path / "link.png"
    link.symlink_to(outside)  # a way out of the allowed folder must not work either
    items = decode([
        ImageMessage(id="inline-big", data=encode(gradient(size=200))),
        ImageMessage(id="uri-ok", data=b"", uri=str(inside)),
        ImageMessage(id="file-uri-ok", data=b"", uri=f"file://{inside}"),
        ImageMessage(id="uri-big", data=b"", uri=str(big)),
        ImageMessage(id="missing", data=b"", uri=str(tmp_path / "nope.png")),
        ImageMessage(id="outside", data=b"", uri=str(outside)),
        ImageMessage(id="symlink-out", data=b"", uri=str(link)),
        ImageMessage(id="relative", data=b"", uri="images/cat.png"),
        ImageMessage(id="http", data=b"", uri="https://example.com/cat.png"),
        ImageMessage(id="no-bytes-no-uri", data=b""),
    ], max_image_bytes=20_000, uri_roots=str(tmp_path))
    got = {item.message.id: item.failure for item in items}
    assert got["uri-ok"] is None and got["file-uri-ok"] is None
    expect = {"inline-big": "above the limit", "uri-big": "larger than the limit",
              "missing": "does not exist", "outside": "outside the allowed",
              "symlink-out": "outside the allowed", "relative": "not an absolute path",
              "http": "unsupported uri"}
    for image_id, needle in expect.items():
        assert got[image_id].stage == "fetch" and needle in got[image_id].reason, got[image_id]
    assert got["no-bytes-no-uri"].stage == "decode"


def test_malformed_records_fail_at_parse_and_tombstones_pass():
    batch = Batch(1, [Item(Record("images", 0, 0, None, b"x", [])),
                      Item(Record("images", 0, 1, b"ok", b"x", [("attributes", b"[")])),
                      Item(record(ImageMessage(id="gone", data=None), 2))])
    decoder = Decoder(SPEC, WorkerSettings())
    decoder(batch)
    decoder.close()
    assert [i.failure.stage if i.failure else None for i in batch.items] == ["parse", "parse",
                                                                              None]
    assert batch.items[2].is_tombstone


def _embedded(image_id: str, label: str = "a") -> Item:
    item = Item(None, ImageMessage(id=image_id, data=b"x", attributes={"label": label}))
    item.vector = np.ones(4, np.float32)
    return item


def test_index_operations_keep_the_last_record_of_each_id():
    gone = Item(None, ImageMessage(id="a", data=None))
    failed = _embedded("c")
    failed.fail("decode", "broken")
    ops = index_operations([_embedded("a", "old"), _embedded("b"), gone, failed,
                            _embedded("b", "new")], "v1")
    assert [type(op) for op in ops] == [Delete, Upsert]
    assert ops[0].id == "a"
    assert ops[1].id == "b" and ops[1].attributes == {"label": "new", "model_version": "v1"}


class FakeEncoder:
    def __init__(self, fail_on_batch=False):
        self.fail_on_batch = fail_on_batch

    def embed_arrays(self, arrays):
        if self.fail_on_batch and len(arrays) > 1:
            raise RuntimeError("batch failed")
        out = np.ones((len(arrays), 4), np.float32)
        out[np.isnan(arrays).any(axis=(1, 2, 3))] = np.nan
        return out


@pytest.mark.parametrize("fail_on_batch", [False, True])
def test_embedder_fails_only_the_items_it_cannot_embed(fail_on_batch):
    items = [Item(None, ImageMessage(id=str(i), data=b"x")) for i in range(3)]
    for item in items:
        item.array = np.zeros(SPEC.shape, np.float32)
    items[1].array[0, 0, 0] = np.nan
    Embedder(FakeEncoder(fail_on_batch))(Batch(1, items))
    assert items[0].vector is not None and items[2].vector is not None
    assert items[1].failure.stage == "embed" and items[1].vector is None


def test_dead_letter_headers_keep_the_original_and_say_why():
    rec = Record("images", 3, 42, b"id", b"v", [("attributes", b"{}"), ("error.reason", b"x")])
    headers = dead_letter_headers(rec, "decode", "broken", "w1")
    names = [k for k, _ in headers]
    assert names.count("error.reason") == 1  # an earlier failure's headers are replaced
    h = dict(headers)
    assert h["attributes"] == b"{}" and h["error.stage"] == b"decode"
    assert h["error.reason"] == b"broken" and h["error.worker"] == b"w1"
    assert h["error.source"] == b"images/3/42"


class Step:
    def __init__(self, name, log, fail_on=None):
        self.name, self.log, self.fail_on = name, log, fail_on

    def __call__(self, batch):
        if batch.seq == self.fail_on:
            raise ValueError("bug")
        self.log.append((self.name, batch.seq))


def test_pipeline_keeps_order_and_times_each_step():
    log, seen = [], []
    pipe = Pipeline([Step("decode", log), Step("embed", log), Step("write", log)], capacity=3,
                    observe=lambda step, s: seen.append(step)).start()
    for seq in range(1, 6):
        pipe.submit(Batch(seq, []))
    done = []
    while len(done) < 5:
        done += pipe.finished(timeout_s=5)
    pipe.stop()
    assert [b.seq for b in done] == [1, 2, 3, 4, 5] and pipe.in_flight == 0
    assert [seq for name, seq in log if name == "write"] == [1, 2, 3, 4, 5]
    assert set(done[0].seconds) == {"decode", "embed", "write"} and len(seen) == 15


def test_pipeline_step_failure_is_reported_and_the_batch_never_finishes():
    pipe = Pipeline([Step("decode", [], fail_on=2)], capacity=3).start()
    for seq in (1, 2, 3):
        pipe.submit(Batch(seq, []))
    done = pipe.finished(timeout_s=5)
    import time

    time.sleep(0.2)
    done += pipe.finished()
    pipe.stop()
    assert [b.seq for b in done] == [1]  # nothing after the failure is reported as finished
    assert isinstance(pipe.error, ValueError)


def test_pool_children_share_the_cores_and_get_their_own_metrics_port():
    from twinstream.settings import Settings

    s = Settings()
    s = replace(s, worker=replace(s.worker, metrics_port=9100))
    a, b = child_settings(s, 0, 2), child_settings(s, 1, 2)
    assert a.worker.metrics_port == 9100 and b.worker.metrics_port == 9101
    assert a.model.threads >= 1 and a.model.threads == b.model.threads
    off = child_settings(Settings(), 1, 2)
    assert off.worker.metrics_port == 0


def test_pipeline_names_the_step_a_batch_is_stuck_in():
    import threading

    release = threading.Event()

    class Stuck:
        name = "embed"

        def __call__(self, batch):
            release.wait(10)

    pipe = Pipeline([Step("decode", []), Stuck()], capacity=3).start()
    pipe.submit(Batch(7, []))
    import time

    time.sleep(0.3)
    assert pipe.stalled(bound_s=5) is None  # busy, but not for long
    step, seq, seconds = pipe.stalled(bound_s=0.1)
    assert (step, seq) == ("embed", 7) and seconds >= 0.2
    release.set()
    assert [b.seq for b in pipe.finished(timeout_s=5)] == [7]
    assert pipe.stalled(bound_s=0.0) is None
    pipe.stop()


def test_dead_letters_keep_header_names_that_are_not_utf8_escaped():
    rec = Record("images", 0, 5, b"k", b"v", [("\udcff\udcfe", b"1"), ("ok", b"2")])
    headers = dict(dead_letter_headers(rec, "parse", "why", "w1"))
    assert headers["\\xff\\xfe"] == b"1" and headers["ok"] == b"2"
    assert all(isinstance(k, str) and k.encode("utf-8") for k in headers)


def test_an_unreadable_record_is_a_parse_failure_naming_its_place():
    from worker.reader import UnreadableRecord

    batch = Batch(1, [Item(UnreadableRecord("images", 2, 41, "the client cannot read it"))])
    decoder = Decoder(SPEC, WorkerSettings())
    decoder(batch)
    decoder.close()
    (item,) = batch.items
    assert item.failure.stage == "parse" and "cannot read" in item.failure.reason
    assert item.record.key is None and item.record.headers == []


def test_decoder_close_never_waits_for_its_threads():
    import threading
    import time

    decoder = Decoder(SPEC, WorkerSettings())
    release = threading.Event()
    decoder.pool.submit(release.wait, 30)  # a thread that will not finish soon
    started = time.monotonic()
    decoder.close()
    assert time.monotonic() - started < 1
    release.set()
