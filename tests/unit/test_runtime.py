"""The torch-free runtime on small hand-built ONNX graphs: foreign encoders, options, bad input."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.imagegen import encode, gradient, hostile
from twinstream.cli.encoder_options import add_encoder_options, foreign_preprocessing, load_encoder
from twinstream.errors import ConfigError, InputError, ModelError
from twinstream.modelcard import ModelCard, content_version
from twinstream.preprocess import Preprocessing, preprocess_bytes
from twinstream.runtime import Encoder, session_options
from twinstream.settings import load_settings

GREY8 = Preprocessing(height=8, width=8, channels=1, mean=(0.5,), std=(0.25,))
WEIGHTS = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)


def linear_encoder(path, input_dims=("N", 1, 8, 8), output_dims=("N", 4), inputs=1):
    """A foreign 'encoder': flatten the image, one linear layer; tensors named x/y, no card."""
    names = ["x", "extra"][:inputs]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1)],
        "foreign",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(input_dims)) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_dims))],
        [numpy_helper.from_array(WEIGHTS, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def expected_vectors(blobs, spec=GREY8):
    x = np.stack([preprocess_bytes(b, spec) for b in blobs]).reshape(len(blobs), -1)
    y = x @ WEIGHTS.T
    return y / np.linalg.norm(y, axis=1, keepdims=True)


@pytest.fixture
def foreign(tmp_path):
    return linear_encoder(tmp_path / "foreign.onnx")


def test_a_model_without_a_card_is_refused_with_the_way_out(foreign):
    with pytest.raises(ModelError, match=r"no twinstream model card.*--allow-no-card"):
        Encoder(foreign)


def test_a_foreign_encoder_runs_with_a_card_built_from_its_graph(foreign):
    encoder = Encoder(foreign, fallback=GREY8)
    assert encoder.dim == 4  # read off the graph's output
    assert encoder.version == content_version(foreign.read_bytes())
    assert encoder.card.architecture["foreign"] is True
    blobs = [encode(gradient(seed=s)) for s in range(3)]
    batch = encoder.embed_bytes(blobs)
    np.testing.assert_allclose(batch.vectors, expected_vectors(blobs), atol=1e-5)


def test_a_dynamic_output_width_is_found_by_running_the_graph(tmp_path):
    path = linear_encoder(tmp_path / "dyn.onnx", output_dims=("N", "D"))
    assert Encoder(path, fallback=GREY8).dim == 4


def test_a_card_that_does_not_fit_the_graph_is_refused_before_any_image(foreign):
    wrong = Preprocessing(height=16, width=16, channels=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(ModelError, match=r"height = 8.*--channels/--size"):
        Encoder(foreign, fallback=wrong)
    rgb = Preprocessing(height=8, width=8, channels=3)
    with pytest.raises(ModelError, match="channels = 1"):
        Encoder(foreign, fallback=rgb)
    card = ModelCard(embedding_dim=7, preprocessing=GREY8)
    with pytest.raises(ModelError, match="outputs 4 dimensions but its card says 7"):
        Encoder(foreign, card=card)


def test_an_encoder_needs_one_image_input(tmp_path):
    path = linear_encoder(tmp_path / "two.onnx", inputs=2)
    with pytest.raises(ModelError, match="one input"):
        Encoder(path, fallback=GREY8)
    flat = linear_encoder(tmp_path / "flat.onnx", input_dims=("N", 64))
    with pytest.raises(ModelError, match=r"\[N, C, H, W\]"):
        Encoder(flat, fallback=GREY8)


def test_truncated_and_missing_model_files(tmp_path, foreign):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(foreign.read_bytes()[:100])
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Encoder(cut)
    with pytest.raises(ModelError, match="not found"):
        Encoder(tmp_path / "nope.onnx")


def test_bad_images_are_reported_by_position_with_a_reason(foreign):
    encoder = Encoder(foreign, fallback=GREY8)
    bad = hostile()
    blobs = [encode(gradient()), bad["text_file"], bad["truncated_png"],
             encode(gradient(seed=2))]
    batch = encoder.embed_bytes(blobs)
    assert batch.kept == [0, 3] and sorted(batch.failed) == [1, 2]
    assert "not an image" in batch.failed[1] and "truncated" in batch.failed[2]
    assert batch.vectors.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-6)


def test_session_options_carry_the_thread_settings(foreign):
    options = session_options(threads=1, inter_threads=3)
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 3
    assert options.execution_mode.name == "ORT_PARALLEL"
    spinning = "session.intra_op.allow_spinning"
    assert options.get_session_config_entry(spinning) == "0"  # a good neighbour by default
    assert session_options(spin=True).get_session_config_entry(spinning) == "1"
    encoder = Encoder(foreign, threads=1, fallback=GREY8)
    used = encoder.session.get_session_options()
    assert used.intra_op_num_threads == 1
    assert used.graph_optimization_level.name == "ORT_ENABLE_ALL"


def flags(*argv):
    parser = argparse.ArgumentParser()
    add_encoder_options(parser)
    return parser.parse_args(list(argv))


def test_foreign_flags_build_the_preprocessing():
    spec = foreign_preprocessing(flags("--allow-no-card", "--size", "64x48", "--mean", "0.5",
                                       "--std", "0.2,0.3,0.4", "--interpolation", "bicubic"))
    assert (spec.height, spec.width, spec.channels) == (64, 48, 3)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.2, 0.3, 0.4)
    assert spec.interpolation == "bicubic"
    grey = foreign_preprocessing(flags("--allow-no-card", "--size", "8", "--mean", "0.5",
                                       "--std", "0.25", "--channels", "1"))
    assert grey == GREY8
    assert foreign_preprocessing(flags()) is None


@pytest.mark.parametrize("argv, message", [
    (("--allow-no-card", "--size", "8"), "needs --mean, --std"),
    (("--size", "8"), "needs --allow-no-card"),
    (("--allow-no-card", "--size", "8x", "--mean", "0", "--std", "1"), "--size"),
    (("--allow-no-card", "--size", "8", "--mean", "a", "--std", "1"), "--mean"),
    (("--allow-no-card", "--size", "8", "--mean", "0,0", "--std", "1"), "2 values for 3"),
    (("--allow-no-card", "--size", "8", "--mean", "0", "--std", "0"), "positive"),
])
def test_foreign_flags_are_checked(argv, message):
    with pytest.raises(InputError, match=message):
        foreign_preprocessing(flags(*argv))


def test_load_encoder_uses_settings_and_flags(foreign):
    settings = load_settings({"TWINSTREAM_MODEL_PATH": str(foreign),
                              "TWINSTREAM_MODEL_THREADS": "1"})
    args = flags("--allow-no-card", "--size", "8", "--mean", "0.5", "--std", "0.25",
                 "--channels", "1")
    encoder = load_encoder(settings, args)
    assert encoder.dim == 4 and encoder.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ConfigError, match="no model given"):
        load_encoder(load_settings({}), args)
    with pytest.raises(ConfigError, match="INTER_THREADS"):
        load_settings({"TWINSTREAM_MODEL_INTER_THREADS": "0"})


def carded_model(path, card: ModelCard) -> ModelCard:
    """The foreign encoder with a card, versioned by export's own code."""
    from export.card import save_atomic, with_card

    proto = onnx.load(str(linear_encoder(path)))
    carded, card = with_card(proto, card)
    save_atomic(carded, path)
    return card


def test_the_version_is_recomputed_on_load_without_the_onnx_package(tmp_path):
    from export.card import graph_bytes
    from twinstream.modelcard import without_metadata

    path = tmp_path / "m.onnx"
    card = carded_model(path, ModelCard(embedding_dim=4, preprocessing=GREY8))
    assert without_metadata(path.read_bytes()) == graph_bytes(onnx.load(str(path)))
    assert Encoder(path).version == card.version


def test_a_graph_edited_under_its_kept_card_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    carded_model(path, ModelCard(embedding_dim=4, preprocessing=GREY8))
    proto = onnx.load(str(path))
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(WEIGHTS * 2, "w"))
    onnx.save(proto, str(path))  # same card, same version string, other weights
    with pytest.raises(ModelError, match="changed after export"):
        Encoder(path)


@pytest.mark.parametrize("field, value", [("embedding_dim", "abc"), ("embedding_dim", True),
                                          ("embedding_dim", 0), ("threshold", "high"),
                                          ("threshold", 7), ("thresholds", [1]),
                                          ("preprocessing", "abc"), ("metric", 3)])
def test_a_card_with_values_of_the_wrong_type_is_a_model_error(field, value):
    import json

    props = ModelCard(embedding_dim=4, preprocessing=GREY8).to_metadata()
    props[f"twinstream.{field}"] = json.dumps(value)
    with pytest.raises(ModelError):
        ModelCard.from_metadata(props)


def test_bytes_that_are_not_a_protobuf_are_a_model_error():
    from twinstream.modelcard import without_metadata

    for junk in (b"\x0f\x01", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x12\x05ab"):
        with pytest.raises(ModelError):
            without_metadata(junk)
