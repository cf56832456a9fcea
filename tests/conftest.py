"""Session fixtures: the real local stack, a small trained model, generated images.

Integration tests talk to a real Kafka-protocol broker and a real Redis 8 over sockets. The stack
is started once per session by ``twinstream.stack`` (the same helper as ``twinstream up``); if
``TWINSTREAM_KAFKA_BOOTSTRAP`` / ``TWINSTREAM_REDIS_URL`` are set, those servers are used instead.
A service that does not start fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from twinstream.settings import Settings, load_settings
from twinstream.stack import LocalStack, stack_for, with_services

# The longest files first: `make test` runs two pytest workers a file at a time, and the run ends
# when the last file does, so the long ones must not be left for the end (seconds on the busy
# 2-core machine, `--durations`).
LONGEST_FIRST = (
    "integration/test_demo.py",  # ~140 s: trains the demo's encoder
    "integration/test_crash_worker.py",  # ~80 s
    "integration/test_membership.py",  # ~70 s
    "integration/test_training.py",
    "integration/test_crash_redis.py",
    "integration/test_crash_broker.py",
    "integration/test_cluster_stages.py",
    "integration/test_reliability.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


# Short session timeout: a new group's first join takes about half of it on the embedded broker.
TEST_SESSION_TIMEOUT_MS = 6000


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    env = {k: v for k, v in os.environ.items() if k.startswith("TWINSTREAM_")}
    return load_settings(env)


@pytest.fixture(scope="session")
def stack(base_settings, tmp_path_factory) -> LocalStack:
    """The broker and Redis 8 for the whole session (started unless given by the environment)."""
    with stack_for(base_settings, workdir=tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def settings(base_settings, stack) -> Settings:
    """Settings pointing at the session stack, with a topic, group and index of this test's own."""
    tag = uuid.uuid4().hex[:8]
    s = with_services(base_settings, stack)
    return replace(
        s,
        kafka=replace(s.kafka, topic=f"images-{tag}", group=f"workers-{tag}", partitions=4,
                      session_timeout_ms=TEST_SESSION_TIMEOUT_MS),
        redis=replace(s.redis, index=f"test-{tag}"),
    )


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """Nine colour x shape classes, 30 images each, for training the session model."""
    from training.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, per_class=30, seed=11)
    return root


@pytest.fixture(scope="session")
def trained_run(shapes_data, tmp_path_factory) -> Path:
    """A tiny encoder trained for a few seconds: real weights, fast to embed."""
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    # Nine classes are too few for a class-disjoint split: every class in training.
    train(TrainConfig(data=str(shapes_data), out=str(run), arch="tiny", embedding_dim=32,
                      image_size=32, epochs=3, seed=0, split="images", test_fraction=0.0,
                      threads=1),  # two threads spin-wait for each other on a busy machine
          log=lambda _m: None)
    return run


@pytest.fixture(scope="session")
def onnx_model(trained_run, shapes_data, tmp_path_factory) -> Path:
    from export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("model") / "model.onnx"
    samples = sorted(shapes_data.rglob("*.png"))[:16]
    export_onnx(trained_run / "best.pt", out, [p.read_bytes() for p in samples])
    return out


@pytest.fixture
def model_settings(settings, onnx_model) -> Settings:
    return replace(settings, model=replace(settings.model, path=str(onnx_model)))
