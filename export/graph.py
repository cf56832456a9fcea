"""torch module -> ONNX graph, then the few rewrites that change no result.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) by default. It is the
exporter torch maintains (the TorchScript one is deprecated), it folds BatchNorm into the
convolutions and constants away, and it refuses a model whose Python control flow depends on the
data instead of silently tracing one branch. ``exporter="torchscript"`` keeps the legacy path
for a model torch.export cannot capture; the parity check guards both.

The rewrites are exact in real arithmetic and checked by the parity check in floating point:
- a mean over H and W becomes ``GlobalAveragePool`` (+ ``Flatten``), which onnxruntime runs in its
  NCHWc layout and quantizes to ``QLinearGlobalAveragePool``: with ``ReduceMean`` the int8 model
  fell back to float MaxPool and Conv and ran at half the speed (bench/export_speed.py);
- an ``Expand`` whose only users broadcast anyway (``F.normalize``'s divisor) is dropped;
- nodes and initializers that no longer feed the output are removed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from twinstream.errors import ModelError
from twinstream.runtime import INPUT_NAME, OUTPUT_NAME

# Opset 21: the newest that every onnxruntime the serving install admits (>= 1.18) can run; the
# operators these encoders use have not changed since opset 18, so a newer one would gain nothing.
OPSET = 21
EXPORTERS = ("dynamo", "torchscript")
BROADCASTING = {"Add", "Sub", "Mul", "Div"}


def torch_to_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], opset: int = OPSET,
                  exporter: str = "dynamo") -> onnx.ModelProto:
    """The encoder as an ONNX graph: input ``images`` [N, C, H, W], output ``embeddings``."""
    if exporter not in EXPORTERS:
        raise ModelError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    example = (torch.zeros(2, *input_shape),)  # batch 2: a batch of 1 could be specialised away
    with _quiet_torch_onnx():
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model, example, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamo=True, optimize=True, verbose=False,
                    dynamic_shapes=({0: torch.export.Dim("N")},))
                return program.model_proto
            buffer = io.BytesIO()
            torch.onnx.export(model, example, buffer, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
            return onnx.load_from_string(buffer.getvalue())
        except Exception as exc:
            hint = " (try --exporter torchscript)" if exporter == "dynamo" else ""
            raise ModelError(f"torch could not export the encoder with the {exporter} exporter"
                             f"{hint}: {str(exc).strip().splitlines()[0]}") from exc


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx warns and logs about things that are not the user's business (its own
    deprecations, torchvision not being installed); real failures still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply the exact rewrites; returns the new graph (shapes inferred) and what was done."""
    proto = onnx.shape_inference.infer_shapes(copy.deepcopy(proto))
    graph = proto.graph
    applied = []
    shapes = _shapes(graph)
    constants = _constants(graph)
    pooled = _spatial_mean_to_global_pool(graph, shapes, constants)
    if pooled:
        applied.append(f"ReduceMean over H,W -> GlobalAveragePool ({pooled}x)")
    dropped = _drop_broadcast_expand(graph, shapes)
    if dropped:
        applied.append(f"Expand before a broadcasting op removed ({dropped}x)")
    removed = _prune(graph)
    if removed:
        applied.append(f"{removed} unused nodes/initializers removed")
    del graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto, applied


Shape = list  # of int (static), str (symbolic) or None (unknown)


def _shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    def dims(value: onnx.ValueInfoProto) -> Shape:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]

    found = {v.name: dims(v) for v in (*graph.input, *graph.value_info, *graph.output)
             if v.type.tensor_type.HasField("shape")}
    found.update({t.name: list(t.dims) for t in graph.initializer})
    return found


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _spatial_mean_to_global_pool(graph: onnx.GraphProto, shapes: dict[str, Shape],
                                 constants: dict[str, np.ndarray]) -> int:
    nodes, count = [], 0
    for node in graph.node:
        rank = len(shapes.get(node.input[0], [])) if node.input else 0
        if node.op_type != "ReduceMean" or rank != 4:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in constants:
            axes = constants[node.input[1]].tolist()
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        if attrs.get("keepdims", 1):
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=node.name))
        else:
            pooled = f"{y}_pooled"
            nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=node.name))
            nodes.append(helper.make_node("Flatten", [pooled], [y], name=f"{node.name}_flatten",
                                          axis=1))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _broadcast(a: Shape, b: Shape) -> Shape | None:
    """Numpy broadcasting of two shapes, or None when it cannot be decided statically."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x is None or y is None:
            return None
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return out[::-1]


def _drop_broadcast_expand(graph: onnx.GraphProto, shapes: dict[str, Shape]) -> int:
    outputs = {o.name for o in graph.output}
    count = 0
    for expand in [n for n in graph.node if n.op_type == "Expand"]:
        source, expanded = expand.input[0], expand.output[0]
        users = [n for n in graph.node if expanded in n.input]
        if expanded in outputs or not users or source not in shapes:
            continue
        safe = True
        for user in users:
            if user.op_type not in BROADCASTING or list(user.input).count(expanded) != 1:
                safe = False
                break
            other = user.input[1] if user.input[0] == expanded else user.input[0]
            before = shapes.get(user.output[0])
            after = _broadcast(shapes.get(other, [None]), shapes[source])
            if before is None or after is None or after != before:
                safe = False
                break
        if not safe:
            continue
        for user in users:
            for i, name in enumerate(user.input):
                if name == expanded:
                    user.input[i] = source
        graph.node.remove(expand)
        count += 1
    return count


def _prune(graph: onnx.GraphProto) -> int:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    removed = 0
    while True:
        needed = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in needed for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    needed = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in needed]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return removed + len(unused)
