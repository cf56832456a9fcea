"""Export's pure parts on hand-built graphs: exact rewrites, FLOPs, card and version, timing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.card import model_version, with_card
from export.flops import flops_per_image
from export.graph import simplify
from export.timing import interleaved
from twinstream.errors import ModelError
from twinstream.modelcard import ModelCard
from twinstream.preprocess import Preprocessing

RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
PROJ_W = RNG.standard_normal((5, 6)).astype(np.float32)


def conv_encoder(opset=21, keepdims=0, expand=True, axes=(2, 3)) -> onnx.ModelProto:
    """Conv -> ReduceMean over H,W -> Gemm -> F.normalize as torch exports it (with Expand)."""
    inits = [numpy_helper.from_array(CONV_W, "cw"), numpy_helper.from_array(PROJ_W, "pw"),
             numpy_helper.from_array(np.array([1], np.int64), "l2axes"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
             numpy_helper.from_array(np.array([5], np.int64), "width")]
    mean_inputs = ["h"]
    mean_attrs = {"keepdims": keepdims}
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        mean_inputs.append("axes")
    else:
        mean_attrs["axes"] = list(axes)
    nodes = [
        helper.make_node("Conv", ["images", "cw"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["h"]),
        helper.make_node("ReduceMean", mean_inputs, ["m"], **mean_attrs),
    ]
    if keepdims:
        nodes.append(helper.make_node("Flatten", ["m"], ["m2"], axis=1))
    nodes.append(helper.make_node("Gemm", ["m2" if keepdims else "m", "pw"], ["lin"], transB=1))
    nodes.append(helper.make_node("ReduceL2", ["lin", "l2axes"], ["norm"], keepdims=1)
                 if opset >= 18 else
                 helper.make_node("ReduceL2", ["lin"], ["norm"], axes=[1], keepdims=1))
    nodes.append(helper.make_node("Clip", ["norm", "eps"], ["clamped"]))
    if expand:
        nodes += [helper.make_node("Shape", ["images"], ["batch"], start=0, end=1),
                  helper.make_node("Concat", ["batch", "width"], ["target"], axis=0),
                  helper.make_node("Expand", ["clamped", "target"], ["divisor"]),
                  helper.make_node("Div", ["lin", "divisor"], ["embeddings"])]
    else:
        nodes.append(helper.make_node("Div", ["lin", "clamped"], ["embeddings"]))
    graph = helper.make_graph(
        nodes, "enc", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                     ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("opset, keepdims, axes", [(21, 0, (2, 3)), (21, 1, (-1, -2)),
                                                    (17, 0, (2, 3))])
def test_rewrites_are_applied_and_change_no_result(opset, keepdims, axes):
    model = conv_encoder(opset, keepdims, axes=axes)
    simple, applied = simplify(model)
    ops = [n.op_type for n in simple.graph.node]
    assert "ReduceMean" not in ops and "GlobalAveragePool" in ops
    assert "Expand" not in ops and "Shape" not in ops and "Concat" not in ops
    assert not {"width"} & {t.name for t in simple.graph.initializer}  # unused: pruned
    assert len(applied) == 3
    onnx.checker.check_model(simple, full_check=True)
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(outputs(simple, x), outputs(model, x), atol=1e-6)


def test_rewrites_leave_what_they_cannot_prove_alone():
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    graph = helper.make_graph(  # a mean over channels too: not a global pool
        [helper.make_node("ReduceMean", ["images", "axes"], ["embeddings"], keepdims=0)], "m",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N"])], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    simple, applied = simplify(model)
    assert [n.op_type for n in simple.graph.node] == ["ReduceMean"] and not applied
    # an Expand that is itself the output must stay
    model = conv_encoder()
    model.graph.output[0].name = "divisor"
    del model.graph.node[-1]
    simple, applied = simplify(model)
    assert "Expand" in [n.op_type for n in simple.graph.node]
    assert not any("Expand" in a for a in applied)


def test_flops_count_conv_and_gemm_multiply_adds():
    model = conv_encoder(expand=False)
    conv = 2 * (6 * 8 * 8) * (3 * 3 * 3)
    gemm = 2 * 6 * 5
    assert flops_per_image(model) == conv + gemm


def card(**changes) -> ModelCard:
    base = dict(embedding_dim=5, preprocessing=Preprocessing(height=8, width=8),
                threshold=0.7, thresholds={"eer": 0.7}, created_at="2026-01-01T00:00:00+00:00")
    return ModelCard(**{**base, **changes})


def test_version_is_a_hash_of_what_decides_an_embedding():
    model = conv_encoder()
    version = model_version(model, card())
    assert version == model_version(model, card(threshold=0.9, created_at="later",
                                                thresholds={"far@0.01": 0.8}))
    assert version != model_version(model, card(preprocessing=Preprocessing(8, 8, invert=True)))
    assert version != model_version(model, card(precision="int8"))
    other = conv_encoder()
    other.graph.initializer[0].raw_data = (CONV_W * 1.001).tobytes()
    assert version != model_version(other, card())


def test_the_card_travels_in_metadata_and_round_trips():
    carded, versioned = with_card(conv_encoder(), card(quantization={"format": "QDQ"},
                                                        provenance={"opset": 21}))
    props = {p.key: p.value for p in carded.metadata_props}
    assert json.loads(props["twinstream.embedding_dim"]) == 5
    back = ModelCard.from_metadata(props)
    assert back == versioned and back.version and back.precision == "fp32"
    assert back.quantization == {"format": "QDQ"} and back.provenance == {"opset": 21}


def test_cards_of_older_files_load_and_bad_precision_is_refused():
    props = card().to_metadata()
    for new_field in ("precision", "quantization", "provenance"):
        props.pop("twinstream." + new_field)
    assert ModelCard.from_metadata(props).precision == "fp32"
    props["twinstream.precision"] = json.dumps("int4")
    with pytest.raises(ModelError, match="precision"):
        ModelCard.from_metadata(props)


def test_interleaved_timing_gives_every_candidate_its_turns():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    medians = interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, rounds=3, warmup=1)
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())
    assert calls == {"a": 4, "b": 4}


def test_int8_reduces_the_weight_range_exactly_when_the_cpu_lacks_vnni():
    from export.quantize import cpu_has_vnni, reduce_range_for

    avx2_only = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
    with_vnni = "processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n"
    assert not cpu_has_vnni(avx2_only) and cpu_has_vnni(with_vnni)
    assert cpu_has_vnni("flags : avx2 avx_vnni")  # Alder Lake's AVX-VNNI counts too
    assert reduce_range_for("on") is True and reduce_range_for("off") is False
    assert reduce_range_for("auto") is (not cpu_has_vnni())
