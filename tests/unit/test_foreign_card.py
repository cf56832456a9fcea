"""``twinstream card write`` on hand-built ONNX graphs: what fits an encoder is carded and
verifies on load; what does not is refused in one line, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.foreign import ForeignFlags, write_card
from tests.unit.test_runtime import WEIGHTS, linear_encoder
from twinstream.cli import main
from twinstream.errors import InputError, ModelError
from twinstream.runtime import Encoder

GREY = ForeignFlags(mean=(0.5,), std=(0.25,))


def graph(path, nodes, inputs, outputs, weights=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(weights)),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def card_write(capsys, *args) -> tuple[int, str, str]:
    code = main(["card", "write", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_card_written_into_a_foreign_encoder_verifies_on_load(tmp_path):
    source = linear_encoder(tmp_path / "foreign.onnx")  # input x [N, 1, 8, 8], output y [N, 4]
    written = write_card(source, GREY, tmp_path / "carded.onnx")
    encoder = Encoder(written.out)  # reads the card and checks its content hash
    assert encoder.version == written.card.version and encoder.dim == 4
    assert encoder.card.preprocessing.shape == (1, 8, 8)  # read off the graph: no --size needed
    assert encoder.card.threshold is None and not encoder.card.calibration  # not calibrated
    assert encoder.card.architecture["input"] == {"name": "x", "type": "FLOAT",
                                                  "shape": [None, 1, 8, 8]}
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    y = x.reshape(3, -1) @ WEIGHTS.T
    assert np.allclose(encoder.embed_arrays(x), y / np.linalg.norm(y, axis=1, keepdims=True),
                       atol=1e-5)


def test_the_version_is_a_content_hash_of_graph_and_preprocessing(tmp_path):
    source = linear_encoder(tmp_path / "foreign.onnx")
    a = write_card(source, GREY, tmp_path / "a.onnx").card
    b = write_card(source, GREY, tmp_path / "b.onnx").card  # same graph, same preprocessing
    c = write_card(source, ForeignFlags(mean=(0.4,), std=(0.25,)), tmp_path / "c.onnx").card
    assert a.version == b.version != c.version


def test_other_metadata_of_the_file_is_kept(tmp_path):
    source = linear_encoder(tmp_path / "foreign.onnx")
    proto = onnx.load(source)
    onnx.helper.set_model_props(proto, {"author": "someone else"})
    onnx.save(proto, source)
    written = write_card(source, GREY, tmp_path / "carded.onnx")
    props = {p.key: p.value for p in onnx.load(written.out).metadata_props}
    assert props["author"] == "someone else"
    Encoder(written.out)  # still verifies: the version leaves metadata out


def test_in_place_by_default_and_a_second_card_needs_force(tmp_path, capsys):
    source = linear_encoder(tmp_path / "foreign.onnx")
    code, out, err = card_write(capsys, source, "--mean", "0.5", "--std", "0.25", "--json")
    assert code == 0, err
    first = json.loads(out)["card"]["version"]
    assert Encoder(source).version == first
    before = source.read_bytes()
    code, _, err = card_write(capsys, source, "--mean", "0.5", "--std", "0.25")
    assert code == 2 and "already has a twinstream model card" in err and "--force" in err
    assert source.read_bytes() == before
    code, _, err = card_write(capsys, source, "--mean", "0.6", "--std", "0.25", "--force")
    assert code == 0, err
    assert Encoder(source).version != first


@pytest.mark.parametrize("case, build, expect", [
    ("input not 4-d", lambda p: linear_encoder(p, input_dims=("N", 64)), "has rank 2"),
    ("fixed batch", lambda p: linear_encoder(p, input_dims=(1, 1, 8, 8)), "fixed batch of 1"),
    ("two inputs", lambda p: linear_encoder(p, inputs=2), "has 2 inputs"),
    ("int input", lambda p: graph(
        p, [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["f"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])]), "not float32"),
    ("output not 2-d", lambda p: graph(
        p, [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])]), "has rank 4"),
    ("output 4-d at run time", lambda p: graph(
        p, [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), "outputs [N, D]"),
    ("not onnx", lambda p: p.write_bytes(b"this is not a model") and p, "is not an ONNX model"),
    ("empty file", lambda p: p.write_bytes(b"") or p, "is not an ONNX model"),
])
def test_what_is_not_an_image_encoder_is_refused_in_one_line(tmp_path, capsys, case, build,
                                                             expect):
    source = build(tmp_path / "model.onnx")
    before = source.read_bytes()
    out = tmp_path / "out.onnx"
    code, _, err = card_write(capsys, source, "--mean", "0.5", "--std", "0.25", "--size", "8",
                              "--out", out)
    assert code == ModelError.exit_code, (case, err)
    assert expect in err, (case, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and source.read_bytes() == before
    assert not list(tmp_path.glob(".*partial"))  # no staged leftovers


@pytest.mark.parametrize("flags, expect", [
    (["--size", "16"], "--size 16x16 does not fit"),
    (["--channels", "3"], "--channels 3 does not fit"),
    (["--mean", "0.1,0.2"], "--mean has 2 values for 1 channel(s)"),
    (["--size", "8x"], "--size '8x'"),
    (["--std", "0"], "std values must be positive"),
])
def test_flags_that_do_not_fit_the_graph_are_refused(tmp_path, capsys, flags, expect):
    source = linear_encoder(tmp_path / "foreign.onnx")
    args = {"--mean": "0.5", "--std": "0.25"}
    extra = []
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag in args:
            args[flag] = value
        else:
            extra += [flag, value]
    out = tmp_path / "out.onnx"
    code, _, err = card_write(capsys, source, *[x for kv in args.items() for x in kv], *extra,
                              "--out", out)
    assert code == InputError.exit_code and expect in err, err
    assert not out.exists()


def test_a_graph_of_any_size_needs_size(tmp_path):
    source = linear_encoder(tmp_path / "foreign.onnx", input_dims=("N", 1, "H", "W"))
    with pytest.raises(InputError, match="takes any size; say which with --size"):
        write_card(source, GREY, tmp_path / "out.onnx")
    with pytest.raises(ModelError, match=r"does not run on a \[2, 1, 9, 9\] input"):
        write_card(source, ForeignFlags(mean=(0.5,), std=(0.25,), size=(9, 9)),
                   tmp_path / "out.onnx")  # the weights want 64 values: 8x8, not 9x9
    written = write_card(source, ForeignFlags(mean=(0.5,), std=(0.25,), size=(8, 8)),
                         tmp_path / "out.onnx")
    assert Encoder(written.out).card.preprocessing.shape == (1, 8, 8)
