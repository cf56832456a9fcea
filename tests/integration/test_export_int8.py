"""int8: a statically quantized QDQ model calibrated on real images, compared with fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.card import read_card
from export.images import calibration_set, evaluation_set
from export.quantize import quantize_int8
from twinstream.errors import InputError, ModelError
from twinstream.runtime import Encoder


@pytest.fixture(scope="module")
def int8_model(onnx_model, shapes_data, tmp_path_factory):
    spec = Encoder(onnx_model).card.preprocessing
    calibration, used = calibration_set(shapes_data, spec, 64)
    held_out = evaluation_set(shapes_data, spec, exclude=used)
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    card, report = quantize_int8(onnx_model, out, calibration, held_out.arrays, held_out.labels)
    return out, card, report, held_out


def test_the_int8_model_is_a_clean_qdq_graph_with_its_own_card(int8_model, onnx_model):
    path, card, _, _ = int8_model
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "GlobalAveragePool"} <= ops
    assert read_card(proto, str(path)) == card
    fp32 = Encoder(onnx_model).card
    assert card.precision == "int8" and card.version != fp32.version
    assert card.quantization["fp32_version"] == fp32.version
    assert card.quantization["calibration"] == {"images": 64, "method": "minmax"}
    assert card.quantization["weights"] == "int8 per-channel"
    assert card.threshold == fp32.threshold and card.preprocessing == fp32.preprocessing
    assert "parity" not in card.provenance and card.provenance["fp32_parity"]["ok"]


def test_int8_embeddings_stay_close_to_fp32_and_the_cost_is_reported(int8_model, onnx_model):
    path, card, report, held_out = int8_model
    assert report["images"] == len(held_out.labels) == 270 - 64  # the calibration images left
    assert report["cosine_vs_fp32"]["mean"] >= 0.99
    shot = report["one_shot"]
    assert shot["classes"] == 9 and 0 <= shot["int8"] <= 1
    assert shot["change_points"] == pytest.approx(100 * (shot["int8"] - shot["fp32"]))
    assert card.quantization["one_shot"] == shot
    assert report["speed"]["speedup"] > 0 and report["speed"]["batch"] == 32
    a = Encoder(onnx_model).embed_arrays(held_out.arrays[:20])
    b = Encoder(path).embed_arrays(held_out.arrays[:20])
    assert np.min(np.sum(a * b, axis=1)) >= 0.98


def test_int8_is_made_from_fp32_only_and_a_broken_result_is_not_written(
        int8_model, onnx_model, tmp_path):
    path, _, _, held_out = int8_model
    with pytest.raises(InputError, match="already int8"):
        quantize_int8(path, tmp_path / "again.onnx", held_out.arrays[:8])
    with pytest.raises(ModelError, match=r"too far from fp32.*nothing was written"):
        quantize_int8(onnx_model, tmp_path / "bad.onnx", held_out.arrays[:8],
                      min_mean_cosine=1.01)
    assert not (tmp_path / "bad.onnx").exists()
