"""Fixtures of the HTTP API tests: a filled index and real uvicorn servers on free ports.

The index holds the session's shape images, embedded by the session model and written with the
real store (float32, so an image finds itself first). Servers run uvicorn in a thread of the test
process on a free loopback port and are stopped at the end of their ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from index.identities import Identities
from index.store import VectorIndex, connect
from twinstream.messages import content_id
from twinstream.preprocess import decode_image
from twinstream.runtime import Encoder
from twinstream.settings import Settings
from twinstream.stack import free_port, with_services
from twinstream.thumbnails import make_thumbnail

TEST_SESSION_TIMEOUT_MS = 6000


@dataclass(frozen=True)
class Gallery:
    """What the filled index holds: id -> (file, label)."""

    items: dict[str, tuple[Path, str]]

    def first_of(self, label: str) -> tuple[str, Path]:
        return next((i, p) for i, (p, lab) in self.items.items() if lab == label)

    @property
    def labels(self) -> list[str]:
        return sorted({lab for _, lab in self.items.values()})


@dataclass
class RunningServer:
    url: str
    settings: Settings
    client: httpx.Client
    app: object = None  # the FastAPI app, served in this process (its state is reachable)


def unique_settings(base: Settings, stack, model: Path | None) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = with_services(base, stack)
    return replace(
        s,
        kafka=replace(s.kafka, topic=f"api-{tag}", group=f"api-workers-{tag}", partitions=2,
                      session_timeout_ms=TEST_SESSION_TIMEOUT_MS),
        redis=replace(s.redis, index=f"api-{tag}", quant="noquant"),
        model=replace(s.model, path=str(model) if model else ""),
    )


@contextlib.contextmanager
def running_server(settings: Settings, encoder: Encoder | None) -> Iterator[RunningServer]:
    """uvicorn serving ``create_app(settings, encoder)`` on a free port, in a thread."""
    port = free_port()
    app = create_app(settings, encoder)
    config = uvicorn.Config(app, host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield RunningServer(url, settings, client, app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="package")
def encoder(onnx_model) -> Encoder:
    return Encoder(onnx_model)


@pytest.fixture(scope="package")
def api_settings(base_settings, stack, onnx_model) -> Settings:
    return unique_settings(base_settings, stack, onnx_model)


@pytest.fixture(scope="package")
def gallery(api_settings, encoder, shapes_data) -> Gallery:
    """The session's 270 shape images in the index, labelled by class, with thumbnails."""
    paths = sorted(shapes_data.rglob("*.png"))
    blobs = [p.read_bytes() for p in paths]
    vectors = encoder.embed_bytes(blobs).vectors
    index = VectorIndex.for_model(connect(api_settings.redis.url), api_settings.redis.index,
                                  encoder.card, api_settings.redis.quant)
    ids = [content_id(b) for b in blobs]
    index.upsert([(i, v, {"label": p.parent.name, "source": p.name})
                  for i, v, p in zip(ids, vectors, paths, strict=True)])
    index.put_thumbnails({i: make_thumbnail(decode_image(b)) for i, b in zip(ids, blobs,
                                                                            strict=True)})
    identities = Identities(index)  # every image is a reference of its class's identity
    for i, v, p in zip(ids, vectors, paths, strict=True):
        identities.add(p.parent.name, i, v)
    return Gallery({i: (p, p.parent.name) for i, p in zip(ids, paths, strict=True)})


@pytest.fixture(scope="package")
def api(api_settings, encoder, gallery) -> Iterator[RunningServer]:
    with running_server(api_settings, encoder) as server:
        yield server


@pytest.fixture(scope="package")
def write_api(base_settings, stack, onnx_model, encoder) -> Iterator[RunningServer]:
    """A server with an index and topic of its own, for tests that enroll, ingest and delete
    whatever they like (the shared gallery stays as the other tests expect it)."""
    from tests import imagegen

    with running_server(unique_settings(base_settings, stack, onnx_model), encoder) as server:
        first = server.client.post("/enroll", data={"label": "first"}, files={
            "image": ("a.png", imagegen.encode(imagegen.gradient(24, seed=77)))})
        assert first.status_code == 201, first.text  # the index exists from here on
        yield server
