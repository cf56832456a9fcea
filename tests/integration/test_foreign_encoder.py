"""Bring your own encoder: a model exported by plain ``torch.onnx.export`` (no card) gets one
with ``twinstream card write --calibrate``; then the CLI, a worker, ``status`` and the search
service use it like a model from ``twinstream export`` (real broker, real Redis 8)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from index.service import SearchService
from tests.integration.worker_support import (
    ThreadWorker,
    count,
    fast,
    image_record,
    publish,
    run_cli,
    wait_until,
)
from training.data import scan_image_folder
from training.metrics import pair_scores, verification
from training.trust import measure_trust
from twinstream.cli import main
from twinstream.messages import content_id
from twinstream.runtime import Encoder

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory):
    """A tiny encoder exported the way anyone would, without a twinstream card."""
    import torch
    from torch import nn

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(4)
            self.fc = nn.Linear(48, 24)

        def forward(self, x):
            return self.fc(self.pool(x).flatten(1))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("foreign") / "plain.onnx"
    torch.onnx.export(Pooled().eval(), torch.zeros(1, 3, 32, 32), str(path),
                      input_names=["input"], output_names=["output"], dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def carded(plain_onnx, shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("carded") / "carded.onnx"
    code = main(["card", "write", str(plain_onnx), "--mean", "0.5", "--std", "0.5",
                 "--calibrate", str(shapes_data), "--out", str(out), "-q"])
    assert code == 0
    return out


def test_a_plain_torch_export_has_no_card_until_card_write(plain_onnx, capsys):
    assert main(["model-card", str(plain_onnx)]) != 0
    assert "no twinstream model card" in capsys.readouterr().err


def test_calibration_is_what_training_measures_on_the_same_embeddings(carded, shapes_data):
    encoder = Encoder(carded)  # loads, and verifies the content-hash version
    card = encoder.card
    folder = scan_image_folder(shapes_data)
    vectors = encoder.embed_bytes([p.read_bytes() for p in folder.paths]).vectors
    ver = verification(*pair_scores(vectors, folder.labels))
    assert card.threshold == pytest.approx(ver["threshold_eer"], abs=1e-6)
    assert card.thresholds["far@0.01"] == pytest.approx(ver["threshold_far@0.01"], abs=1e-6)
    trust = measure_trust(vectors, folder.labels)
    assert card.calibration["slope"] == pytest.approx(trust["calibration"]["slope"], rel=1e-6)
    assert card.recognition["thresholds"] == trust["recognition"]["thresholds"]
    assert card.recognition["measured_on"] == "9 validation classes, 270 images"
    assert card.provenance["calibrated_on"]["classes"] == 9


def test_model_card_and_embed_treat_it_like_a_native_model(carded, shapes_data, capsys):
    assert main(["model-card", str(carded), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["architecture"]["foreign"] is True and shown["embedding_dim"] == 24
    assert shown["runtime"]["provider"] == "CPUExecutionProvider"
    assert shown["calibration"]["method"] == "platt"
    image = sorted(shapes_data.rglob("*.png"))[0]
    assert main(["embed", str(image), "--model", str(carded), "--json"]) == 0
    embedded = json.loads(capsys.readouterr().out)
    assert embedded["model"]["version"] == Encoder(carded).version
    expected = Encoder(carded).embed_bytes([image.read_bytes()]).vectors[0]
    assert np.allclose(embedded["vectors"][0], expected, atol=1e-6)


def test_a_worker_status_and_the_search_service_use_it(carded, settings, shapes_data):
    s = fast(replace(settings, model=replace(settings.model, path=str(carded))))
    images = sorted(shapes_data.rglob("*.png"))[::15]  # 2 of each of the 9 classes
    publish(s, [image_record(p.read_bytes(), label=p.parent.name) for p in images])
    with ThreadWorker(s) as running:
        wait_until(lambda: count(s) == len(images), 60, "the worker indexed every image")
        assert running.worker.health_report()["model"]["provider"] == "CPUExecutionProvider"
        status = wait_until(lambda: (st := json.loads(run_cli(s, "status", "--json").stdout))
                            .get("workers") and st, 30, "the worker in status")
        assert status["workers"][0]["provider"] == "CPUExecutionProvider"
        assert status["workers"][0]["version"] == Encoder(carded).version

    service = SearchService(s, Encoder.from_settings(s))
    probe = images[0].read_bytes()
    result = service.search_image(probe, k=3)
    assert result.hits[0].id == content_id(probe) and result.hits[0].score > 0.999
    assert result.probabilities[0] is not None  # calibrated by card write
    ready, checks = service.readiness()
    assert ready and checks["model"]["provider"] == "CPUExecutionProvider"

    service.enroll([probe], images[0].parent.name)
    recognized, _, _ = service.recognize(images[1].read_bytes())  # same class, another image
    assert "model card" in recognized.threshold_reason  # the card's measured cut, not a guess
    assert recognized.warning is None
