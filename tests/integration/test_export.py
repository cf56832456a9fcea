"""Export on real trained models: graph, card, parity, re-export, every architecture, bad input.

Uses the session's tiny model (``trained_run``/``onnx_model``) and images of ``shapes_data``;
no services are needed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.card import model_version, read_card
from export.onnx_export import export_onnx
from export.parity import check_parity, parity_inputs
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models import ARCHITECTURES, EncoderConfig, build_encoder
from twinstream.calibration import calibrated_probability, recognition_threshold
from twinstream.errors import ModelError
from twinstream.preprocess import Preprocessing
from twinstream.runtime import Encoder


def samples(shapes_data: Path, count: int = 16) -> list[bytes]:
    paths = sorted(shapes_data.rglob("*.png"))
    return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]


def test_the_graph_is_clean_and_takes_any_batch(onnx_model):
    proto = onnx.load(str(onnx_model))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [21]
    (image_input,), (output,) = proto.graph.input, proto.graph.output
    dims = image_input.type.tensor_type.shape.dim
    assert image_input.name == "images" and output.name == "embeddings"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    ops = {n.op_type for n in proto.graph.node}
    assert "GlobalAveragePool" in ops and not ops & {"ReduceMean", "Expand", "Identity"}
    session = Encoder(onnx_model).session
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        (y,) = session.run(["embeddings"], {"images": x})
        assert y.shape == (batch, 32)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)  # normalised


def test_the_card_carries_what_serving_and_people_need(onnx_model, trained_run):
    _, meta = load_checkpoint(trained_run)
    proto = onnx.load(str(onnx_model))
    card = read_card(proto, str(onnx_model))
    verification = meta["metrics"]["verification"]
    assert card.embedding_dim == 32 and card.metric == "cosine" and card.precision == "fp32"
    assert card.preprocessing == meta["preprocessing"]
    assert card.threshold == pytest.approx(verification["threshold_eer"])
    assert card.thresholds["far@0.01"] == pytest.approx(verification["threshold_far@0.01"])
    assert card.loss == "contrastive" and card.architecture["arch"] == "tiny"
    assert card.training_data["classes"] == 9 and card.training_data["images"] == 270
    assert card.metrics["one_shot"]["accuracy"] == meta["metrics"]["one_shot"]["accuracy"]
    assert dt.datetime.fromisoformat(card.created_at).tzinfo is not None
    parity = card.provenance["parity"]
    assert parity["ok"] and parity["inputs"] == "images" and parity["max_abs_diff"] <= 1e-4
    assert card.provenance["opset"] == 21 and "dynamo" in card.provenance["exporter"]
    assert card.version == model_version(proto, card)  # the version is the content hash


def test_the_card_carries_calibration_and_recognition_cuts_from_validation(onnx_model,
                                                                          trained_run):
    _, meta = load_checkpoint(trained_run)
    card = Encoder(onnx_model).card
    assert card.calibration == meta["metrics"]["calibration"]
    assert card.calibration["slope"] > 0 and card.calibration["prior"] == 0.5
    curve = card.recognition
    assert curve["gallery_sizes"] == [1, 10, 100, 1000] and 0.05 in curve["target_fpirs"]
    assert np.array(curve["thresholds"]).shape == (len(curve["target_fpirs"]), 4)
    assert curve["classes"] == meta["data"]["val_classes"]
    choice = recognition_threshold(card, 10)
    assert choice.source == "gallery curve" and -1 <= choice.threshold <= 1
    probability = calibrated_probability(card, [card.threshold - 0.2, card.threshold + 0.01])
    assert 0 <= probability[0] < probability[1] <= 1


def test_an_older_checkpoint_is_measured_at_export_or_warns(trained_run, shapes_data, tmp_path):
    payload = torch.load(trained_run / "best.pt", weights_only=True)
    for key in ("calibration", "recognition"):
        del payload["metrics"][key]
    old_run = tmp_path / "old"
    old_run.mkdir()
    torch.save(payload, old_run / "best.pt")
    (old_run / "split.json").write_bytes((trained_run / "split.json").read_bytes())
    logs: list[str] = []
    card, _ = export_onnx(old_run, tmp_path / "measured.onnx", samples(shapes_data, 4),
                          log=logs.append)
    assert any("measuring calibration and recognition cuts on 9 validation" in m for m in logs)
    assert card.calibration["slope"] > 0 and card.recognition["classes"] == 9
    (old_run / "split.json").unlink()  # the validation images can no longer be found
    logs.clear()
    bare, _ = export_onnx(old_run, tmp_path / "bare.onnx", samples(shapes_data, 4),
                          log=logs.append)
    assert not bare.calibration and not bare.recognition
    assert any("warning: no calibration or recognition cuts" in m for m in logs)
    assert bare.version == card.version  # descriptive fields: same version
    assert recognition_threshold(Encoder(tmp_path / "bare.onnx").card, 10).source == \
        "pair threshold"


def test_exporting_again_gives_the_same_version_and_the_legacy_exporter_agrees(
        trained_run, onnx_model, shapes_data, tmp_path):
    original = Encoder(onnx_model)
    again, _ = export_onnx(trained_run, tmp_path / "again.onnx", samples(shapes_data, 4))
    assert again.version == original.version  # same weights -> same version, whatever the time
    legacy, parity = export_onnx(trained_run, tmp_path / "legacy.onnx", samples(shapes_data, 4),
                                 exporter="torchscript")
    assert parity["ok"] and legacy.provenance["exporter"] == "torch.onnx (torchscript)"
    blobs = samples(shapes_data, 8)
    a = original.embed_bytes(blobs).vectors
    b = Encoder(tmp_path / "legacy.onnx").embed_bytes(blobs).vectors
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_parity_catches_a_graph_that_computes_something_else(trained_run, onnx_model,
                                                             shapes_data):
    model, meta = load_checkpoint(trained_run)
    inputs, source = parity_inputs(samples(shapes_data), meta["preprocessing"])
    assert source == "images" and len(inputs) == 16
    with torch.no_grad():  # the same architecture, other weights: a stale or wrong export
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    check = check_parity(model, onnx.load(str(onnx_model)), inputs)
    assert not check["ok"] and check["max_abs_diff"] > 1e-3


def test_a_failed_parity_check_writes_nothing_and_says_by_how_much(trained_run, shapes_data,
                                                                   tmp_path):
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ModelError) as info:
        export_onnx(trained_run, out, samples(shapes_data, 4), max_abs=1e-12, min_cosine=1.5)
    message = str(info.value)
    assert "parity check failed on 4 images" in message and "limit 1e-12" in message
    assert "min cosine = " in message and "nothing was written" in message
    assert not out.exists() and not list(out.parent.glob("*"))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_exports_with_parity(arch, shapes_data, tmp_path):
    """Any encoder ``training/models.py`` can build exports (random weights, real images)."""
    side = 105 if arch == "koch" else 64  # Koch's valid convolutions need >= 65 px (paper: 105)
    cfg = EncoderConfig(arch=arch, embedding_dim=16, height=side, width=side)
    spec = Preprocessing(height=cfg.height, width=cfg.width, channels=cfg.in_channels)
    torch.manual_seed(0)
    model = build_encoder(cfg).eval()
    save_checkpoint(tmp_path / "best.pt", model, cfg, spec, loss="contrastive",
                    data={"classes": 0, "images": 0}, metrics={})
    card, parity = export_onnx(tmp_path / "best.pt", tmp_path / "m.onnx", samples(shapes_data, 8))
    assert parity["ok"] and parity["inputs"] == "images"
    assert card.embedding_dim == 16 and card.architecture["arch"] == arch
    assert card.threshold is None  # no validation ROC in this checkpoint: no made-up threshold


def checkpoint_payload(trained_run: Path) -> dict:
    return torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)


def test_a_truncated_checkpoint_is_refused(trained_run, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((trained_run / "best.pt").read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        export_onnx(cut, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_checkpoint_of_another_architecture_is_refused(trained_run, tmp_path):
    payload = checkpoint_payload(trained_run)
    payload["encoder"] = {**payload["encoder"], "arch": "small"}  # tiny weights, small config
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(ModelError, match="does not match its architecture"):
        export_onnx(tmp_path / "mixed.pt", tmp_path / "m.onnx")
    payload["encoder"]["arch"] = "no-such-net"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(ModelError, match="unknown architecture"):
        export_onnx(tmp_path / "unknown.pt", tmp_path / "m.onnx")


class Payload:
    """Unpickling this runs code: exactly what weights_only loading must refuse."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_a_checkpoint_is_never_run(trained_run, tmp_path):
    payload = checkpoint_payload(trained_run)
    evil = Payload()
    evil.marker = tmp_path / "code-ran"
    payload["extra"] = evil
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        export_onnx(tmp_path / "evil.pt", tmp_path / "m.onnx")
    assert not evil.marker.exists()
