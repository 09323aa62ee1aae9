"""A classify graph runs its last encoder layer, after the attention, on the [CLS] row only.

The classify head reads one row of the last hidden state (the pooler's Gather of row 0), and
everything between the last layer's attention and that Gather works row by row (the attention
output and FFN MatMuls, the residual Adds, the layer norms, per-row INT8 scales). So slicing
row 0 out of the attention's output and out of the residual there gives the same logits
(exact: each kept row is computed by the same ops) while the last layer's attention output and
FFN MatMuls, which classify's default recipe keeps in FP32, cost one row instead of one per
token. Keys and values still come from every token. Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import re

import numpy as np

from edgefleet.model.graph import readers_of

__all__ = ["cls_row_last_layer", "CLS_SLICE_SUFFIX"]

CLS_SLICE_SUFFIX = "/cls_row"
# ops that compute each row of [batch, tokens, hidden] from that row alone (with a 2-D weight
# for MatMul: x @ W), the only ones allowed between the slice and the pooler's Gather
ROW_WISE = {"MatMul", "Add", "Sub", "Mul", "Div", "Sqrt", "Pow", "Erf", "Tanh", "BiasGelu",
            "Gelu", "FastGelu", "LayerNormalization", "SkipLayerNormalization"}


def _layer(name: str) -> int | None:
    found = re.search(r"/layer\.(\d+)/", name)
    return int(found.group(1)) if found else None


def cls_row_last_layer(model):
    """Return a copy of an FP32 classify graph with the slices inserted (see the module doc), or
    None where the graph is not the expected shape (then nothing is rewritten)."""
    import copy

    from onnx import helper, numpy_helper

    graph = model.graph
    layers = [index for node in graph.node if (index := _layer(node.name)) is not None]
    if not layers:
        return None
    last = f"/layer.{max(layers)}/attention/output/"
    dense = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith(last + "dense/MatMul")]
    residual_add = [n for n in graph.node if n.op_type == "Add" and n.name.endswith(last + "Add")]
    if len(dense) != 1 or len(residual_add) != 1 or not _row_wise_to_pooler(graph, residual_add[0]):
        return None
    dense_out = dense[0].output[0]
    others = [name for name in residual_add[0].input if name != dense_out]
    # the attention output MatMul must feed the residual Add alone (no outlier path, no other reader)
    if (len(others) != 1 or len(residual_add[0].input) != 2
            or [n.name for n in readers_of(graph.node).get(dense_out, [])] != [residual_add[0].name]):
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    graph.initializer.extend(numpy_helper.from_array(np.array([value], np.int64), f"cls_row/{key}")
                             for key, value in (("start", 0), ("end", 1), ("axis", 1)))
    for reader, tensor in ((nodes[dense[0].name], dense[0].input[0]),
                           (nodes[residual_add[0].name], others[0])):
        sliced = tensor + CLS_SLICE_SUFFIX
        reader.input[list(reader.input).index(tensor)] = sliced
        graph.node.insert(list(graph.node).index(reader),  # nodes stay topologically sorted
                          helper.make_node("Slice", [tensor, "cls_row/start", "cls_row/end",
                                                     "cls_row/axis"], [sliced],
                                           name=reader.name + CLS_SLICE_SUFFIX))
    return model


def _row_wise_to_pooler(graph, start) -> bool:
    """Does everything start feeds work row by row (each input an initializer or itself fed by
    start) until Gathers of row 0 on axis 1, which alone lead to the graph's outputs?"""
    init = {item.name: item for item in graph.initializer}
    readers = readers_of(graph.node)
    fed, pending, nodes = set(start.output), list(start.output), {}
    while pending:
        for node in readers.get(pending.pop(), []):
            if node.name not in nodes:
                nodes[node.name] = node
                if node.op_type != "Gather" or _channels(graph, node):
                    fed.update(node.output)
                    pending.extend(node.output)
    if fed & {item.name for item in graph.output}:
        return False  # a per-token tensor would leave the graph
    for node in nodes.values():
        if node.op_type == "Gather" and _channels(graph, node):
            continue  # SmoothQuant's outlier channels (edgefleet.model.smooth): row by row
        if node.op_type == "Gather":
            if _axis(node) != 1 or _constant(graph, node.input[1]) != 0:
                return False
        elif node.op_type not in ROW_WISE or any(name not in fed and name not in init
                                                 for name in node.input if name):
            return False
        elif node.op_type == "MatMul" and (node.input[1] not in init
                                           or len(init[node.input[1]].dims) != 2):
            return False
    return True


def _constant(graph, name: str):
    """Return the value (as a Python number or list) of an initializer or Constant node, or None."""
    from onnx import numpy_helper

    for item in graph.initializer:
        if item.name == name:
            return numpy_helper.to_array(item).tolist()
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value).tolist()
    return None


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _channels(graph, node) -> bool:
    """Is node a Gather of constant channels (the last axis of [batch, tokens, hidden])?"""
    return (node.op_type == "Gather" and _axis(node) in (-1, 2)
            and _constant(graph, node.input[1]) is not None)
