"""Floating-point operations of one image through an ONNX encoder (for the benchmark's ratios).

Counts the multiply-adds of Conv, Gemm and MatMul (2 FLOPs each), which is where all but a
fraction of a percent of a conv encoder's arithmetic is; pooling, activations and the final
normalisation are left out.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper


def flops_per_image(proto: onnx.ModelProto) -> int:
    graph = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and weight and all(out[1:]):
                # every output element is a dot product over C_in/groups x kH x kW inputs
                total += 2 * math.prod(out[1:]) * math.prod(weight[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if not a or not b or len(b) != 2:
                continue
            attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            k, n = (b[1], b[0]) if attrs.get("transB", 0) else (b[0], b[1])
            rows = math.prod(a[1:-1]) if len(a) > 2 else 1  # per image: batch dim left out
            total += 2 * rows * k * n
    return int(total)
