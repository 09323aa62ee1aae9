"""Per-row (per-token) activation scales: a text's INT8 result independent of its batch.

ONNX Runtime's DynamicQuantizeLinear takes one scale and zero point for the whole tensor, so a
token's quantized values depend on every other token in the call: on its neighbours in a batch
and on their padding. This rewrite replaces each DynamicQuantizeLinear that feeds only
MatMulInteger nodes by a quantization of each row (the last axis: one token's features) with its
own scale:

    scale = max(|x| over the row) / 127,  q = round(x / scale) + 128  (uint8, zero point 128)

The zero point is the same constant for every row, so MatMulInteger (which takes one zero point
for A) runs unchanged; the scale becomes a [..., 1] tensor that the quantizer's existing
`scale * weight_scale` Mul broadcasts to [..., N]. A row's quantized values then depend only on
that row, the integer product is exact, and every later op is per row or masked, so the same text
gives the same numbers alone or in any batch, whatever the padding. All ops here (ReduceMax, Abs,
Div, Round, Add, Cast, Mul, Max) give the same bits on x86 and arm64, so the arch-stable graph
stays arch-stable.

A DynamicQuantizeLinear read by anything else (QAttention, QEmbedLayerNormalization: the fused
graph) takes per-tensor scales only and is left alone; `per_tensor_left` counts them.
"""

from __future__ import annotations

import numpy as np

from edgefleet.model.graph import readers_of

__all__ = ["per_row_activations", "per_tensor_left", "ZERO_POINT", "PER_ROW_SUFFIX"]

ZERO_POINT = 128
# the name of each row-max node ends with this (how a graph is recognised as per-row)
PER_ROW_SUFFIX = "/row_absmax"
# a row of zeros gets this scale instead of 0 (its values quantize to the zero point either way)
_TINY = np.float32(1e-30)


def _replaceable(node, readers: dict) -> bool:
    quantized, scale, zero_point = (list(node.output) + ["", "", ""])[:3]
    users = readers.get(quantized, []) + readers.get(zero_point, [])
    return bool(users) and all(user.op_type == "MatMulInteger" for user in users) and \
        all(user.op_type == "Mul" for user in readers.get(scale, []))


def per_tensor_left(model) -> int:
    """Return how many DynamicQuantizeLinear nodes per_row_activations would leave per tensor."""
    readers = readers_of(model.graph.node)
    return sum(1 for node in model.graph.node
               if node.op_type == "DynamicQuantizeLinear" and not _replaceable(node, readers))


def per_row_activations(model, levels: int = 127, zero_point: int = ZERO_POINT,
                        truncate: bool = False):
    """Return a copy of an INT8 graph with per-row activation scales (see the module doc).

    levels: the largest |q - zero_point| (127: 8-bit; 63 with zero_point 64: 7-bit, which
    AVX2's U8S8 kernel multiplies without saturating). truncate: round by adding 0.5 and
    casting (Cast truncates; every shifted value is positive) instead of Round + Add, one op
    fewer per quantized MatMul (ties round up instead of to even).
    """
    import copy

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    readers = readers_of(graph.node)
    shared: dict[str, np.ndarray] = {"per_row/inv127": np.array(1.0 / levels, np.float32),
              "per_row/tiny": np.array(_TINY, np.float32),
              "per_row/zero_point_f": np.array(zero_point + (0.5 if truncate else 0.0),
                                               np.float32),
              "per_row/zero_point": np.array(zero_point, np.uint8)}
    if opset >= 18:
        shared["per_row/last_axis"] = np.array([-1], np.int64)
    count = 0
    nodes = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear" or not _replaceable(node, readers):
            nodes.append(node)
            continue
        x = node.input[0]
        quantized, scale, zero_point = (list(node.output) + ["", "", ""])[:3]
        name = f"per_row/{count}"  # short: the names repeat in every node of the rewrite
        count += 1

        def make(op, inputs, output, suffix, prefix=name, **attrs):
            nodes.append(helper.make_node(op, inputs, [output], name=f"{prefix}/{suffix}",
                                          **attrs))
            return output

        magnitude = make("Abs", [x], f"{name}/abs", "abs")
        if opset >= 18:
            absmax = make("ReduceMax", [magnitude, "per_row/last_axis"], f"{name}/absmax",
                          PER_ROW_SUFFIX[1:], keepdims=1)
        else:
            absmax = make("ReduceMax", [magnitude], f"{name}/absmax", PER_ROW_SUFFIX[1:],
                          axes=[-1], keepdims=1)
        raw = make("Mul", [absmax, "per_row/inv127"], f"{name}/raw_scale", "raw_scale")
        row_scale = make("Max", [raw, "per_row/tiny"], scale or f"{name}/scale", "scale")
        scaled = make("Div", [x, row_scale], f"{name}/scaled", "div")
        if not truncate:
            scaled = make("Round", [scaled], f"{name}/levels", "round")
        shifted = make("Add", [scaled, "per_row/zero_point_f"], f"{name}/shifted", "shift")
        make("Cast", [shifted], quantized, "cast", to=TensorProto.UINT8)
        if zero_point:
            make("Identity", ["per_row/zero_point"], zero_point, "zero_point")
    if not count:
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, key) for key, value in shared.items())
    onnx.checker.check_model(model) if model.ByteSize() < 2**31 - 2**20 else None
    return model
