"""broker -> worker -> Redis 8, end to end, with real services and a real exported model."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from index.store import VectorIndex, connect
from tests.integration.worker_support import (
    ThreadWorker,
    count,
    fast,
    good_image,
    image_record,
    index_of,
    publish,
    wait_until,
)
from twinstream.runtime import Encoder
from twinstream.settings import child_env
from worker.ingest import ingest_files

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_200_images_end_up_indexed_and_find_themselves(model_settings, tmp_path):
    """Every id is indexed with its own image's embedding.

    Same-class shapes sit within ~0.001 cosine of each other, finer than Q8's rounding, so exact
    self-retrieval is checked on a float32 (noquant) index; the stored vectors are compared with
    freshly computed embeddings as well.
    """
    from training.shapes import generate_shapes

    model_settings = replace(model_settings, redis=replace(model_settings.redis, quant="noquant"))
    generate_shapes(tmp_path / "imgs", per_class=23, seed=5)  # 207 images, keep 200
    paths = sorted((tmp_path / "imgs").rglob("*.png"))[:200]
    summary = ingest_files(model_settings.kafka, paths)
    assert summary.published == 200 and not summary.failed
    assert len(set(summary.ids)) == 200

    worker = subprocess.run(
        [sys.executable, "-m", "twinstream", "worker", "--exit-when-idle", "8", "-q",
         "--batch", "32"],
        env=child_env(model_settings, os.environ), cwd=ROOT, capture_output=True, text=True,
        timeout=240)
    assert worker.returncode == 0, worker.stderr

    encoder = Encoder(model_settings.model.path)
    index = VectorIndex.live(connect(model_settings.redis.url), model_settings.redis.index)
    assert index.count() == 200
    assert all(index.exists(i) for i in summary.ids)

    embedded = encoder.embed_bytes([p.read_bytes() for p in paths])
    assert not embedded.failed
    for image_id, vector in zip(summary.ids, embedded.vectors, strict=True):
        assert float(index.vector(image_id) @ vector) > 0.9999
    misses = []
    for image_id, path, vector in zip(summary.ids, paths, embedded.vectors, strict=True):
        hits = index.search(vector, k=3)
        if hits[0].id != image_id:
            misses.append((path.name, [(h.id[:6], h.score) for h in hits], image_id[:6]))
    assert not misses, (len(misses), misses[:5])


@pytest.mark.parametrize("thumbnails", [True, False])
def test_thumbnails_are_kept_only_when_the_worker_is_asked_to(model_settings, thumbnails):
    """``TWINSTREAM_WORKER_THUMBNAILS=false`` spares the worker the JPEG and Redis the bytes,
    and changes nothing else: every image is still indexed."""
    s = fast(model_settings, thumbnails=thumbnails)
    records = [image_record(good_image(i, size=24)) for i in range(20)]
    publish(s, records)
    with ThreadWorker(s):
        wait_until(lambda: count(s) == 20, 60, "20 images indexed")
    index = index_of(s)
    ids = [key.decode() for key, _, _ in records]
    assert all(index.exists(i) for i in ids)
    stored = [index.thumbnail(i) for i in ids]
    if thumbnails:  # 24 px PNGs of a few hundred bytes are their own thumbnails
        assert stored == [value for _, value, _ in records]
    else:
        assert stored == [None] * 20
