"""SmoothQuant for dynamic INT8: move activation outliers into the weights before quantizing.

BERT's hidden states have a few channels far larger than the rest, so a per-tensor activation
scale (dynamic INT8) wastes most of its 256 levels on them. For each MatMul/Attention input X
and weight W (K x N), with per-channel maxima a (of X, from calibration) and w (of W's rows):
s = a**alpha / w**(1 - alpha); X W = (X / s)(s W). The division becomes one Mul node before the
op; s W is folded into the weight, which per-channel weight quantization absorbs well.

Where it is exact, fewer nodes run: a MatMul fed only by a fused Attention gets its 1/s folded
into the Attention's V columns (output channel j of attention is a mix of V's column j), and an
outlier path's Add comes after the bias Add, which ORT then fuses into the INT8 MatMul.
"""

from __future__ import annotations

import numpy as np

from edgefleet.model.graph import EXACT_SUFFIX, OUTLIER_GATHER_SUFFIX, OUTLIER_MATMUL_SUFFIX, readers_of

__all__ = ["SMOOTH_OPS", "activation_absmax", "smooth", "resolve_outliers"]

SMOOTH_OPS = ("MatMul", "Attention")


def _targets(model, nodes: set[str] | None = None):
    """Yield (node, weight initializer) for MatMul/Attention nodes with a constant 2-D weight."""
    init = {item.name: item for item in model.graph.initializer}
    for node in model.graph.node:
        if node.name.endswith(EXACT_SUFFIX):  # means and sums of the arch-stable graph
            continue
        if node.op_type in SMOOTH_OPS and node.input[1] in init and (
                nodes is None or node.name in nodes):
            if len(init[node.input[1]].dims) == 2:
                yield node, init[node.input[1]]


def activation_absmax(onnx_path, tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """Run the FP32 graph on texts; return per-channel max |input| of each target node."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    watch = {node.name: node.input[0] for node, _ in _targets(model)}
    known = {item.name for item in model.graph.output}
    for tensor in sorted(set(watch.values()) - known):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_outputs()]
    inputs = {item.name for item in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    from edgefleet.model.evaluate import encode_feeds

    for text in texts:
        outputs = dict(zip(names, session.run(names, encode_feeds(tokenizer, text, inputs)), strict=True))
        for tensor in set(watch.values()):
            value = np.abs(outputs[tensor]).reshape(-1, outputs[tensor].shape[-1]).max(axis=0)
            maxima[tensor] = np.maximum(maxima.get(tensor, value), value)
    return {node: maxima[tensor] for node, tensor in watch.items()}


def smooth(model, absmax: dict[str, np.ndarray], alpha: float | dict[str, float] = 0.5,
           outliers: dict[str, int] | None = None, fold_values: bool = True,
           outlier_after_bias: bool = True):
    """Return a copy of model with a Mul(1/s) before each target node and s folded into W.

    alpha is one value for every node or {node name: alpha}; nodes missing from the dict (or
    given 0) are left alone. outliers {MatMul name: k} also splits off the k input channels
    with the largest calibrated maxima: the smoothing Mul zeroes them, and a Gather + small
    FP32 MatMul (k x N) + Add computes their share exactly (LLM.int8()-style decomposition).
    fold_values folds a MatMul's 1/s into the fused Attention feeding it (V columns) instead of
    a Mul; outlier_after_bias adds the exact share after the bias Add (see _exact_after_bias).
    Both are exact in real arithmetic; each can be turned off to compare graphs.
    """
    outliers = outliers or {}
    extra_inits: list = []
    import copy

    import onnx
    from onnx import numpy_helper

    model = copy.deepcopy(model)
    new_nodes = []
    targets = {node.name: weight for node, weight in _targets(model, set(absmax))}
    producers = {output: node for node in model.graph.node for output in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    init = {item.name: item for item in model.graph.initializer}
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        weight = targets.get(node.name)
        node_alpha = alpha.get(node.name, 0.0) if isinstance(alpha, dict) else alpha
        if weight is not None and node_alpha > 0:
            w = numpy_helper.to_array(weight).astype(np.float32)
            a = np.maximum(absmax[node.name].astype(np.float32), 1e-5)
            w_max = np.maximum(np.abs(w).max(axis=1), 1e-5)
            s = np.power(a, node_alpha) / np.power(w_max, 1 - node_alpha)
            s = np.clip(s, 1e-3, 1e3).astype(np.float32)
            inverse = (1.0 / s).astype(np.float32)
            scaled = w * s[:, None]
            k = outliers.get(node.name, 0) if node.op_type == "MatMul" else 0
            if k:
                picked = np.sort(np.argsort(a)[::-1][:k]).astype(np.int64)
                inverse[picked] = 0.0
                scaled[picked, :] = 0.0
                path_nodes, path_inits = _outlier_path(node, w[picked, :], picked)
                new_nodes.extend(path_nodes)
                extra_inits.extend(path_inits)
            weight.CopyFrom(numpy_helper.from_array(scaled, weight.name))
            source = producers.get(node.input[0])
            if not (fold_values and readers.get(node.input[0]) == 1 and not k and
                    _fold_into_values(source, init, inverse)):
                scale_name = f"{node.name}_smooth_scale"
                out_name = f"{node.input[0]}_smoothed_for_{node.name}"
                model.graph.initializer.append(numpy_helper.from_array(inverse, scale_name))
                new_nodes.append(onnx.helper.make_node("Mul", [node.input[0], scale_name],
                                                       [out_name], name=f"{node.name}_smooth"))
                node.input[0] = out_name
        new_nodes.append(node)
        if weight is not None and node_alpha > 0 and outliers.get(node.name, 0) and \
                node.op_type == "MatMul":
            exact = f"{node.name}_outlier_out"
            merged = node.output[0]
            node.output[0] = f"{merged}_int8_part"
            new_nodes.append(onnx.helper.make_node("Add", [node.output[0], exact], [merged],
                                                   name=f"{node.name}_outlier_add"))
    model.graph.initializer.extend(extra_inits)
    del model.graph.node[:]
    model.graph.node.extend(_exact_after_bias(new_nodes, init) if outlier_after_bias
                            else new_nodes)
    return model


def _fold_into_values(attention, init: dict, inverse: np.ndarray) -> bool:
    """Scale the V columns (weight and bias) of a fused Attention by inverse; False if the
    producer is not an Attention with a packed (D, 3D) initializer weight and bias."""
    from onnx import numpy_helper

    if attention is None or attention.op_type != "Attention" or len(attention.input) < 3:
        return False
    if any(a.name == "qkv_hidden_sizes" for a in attention.attribute):
        return False
    weight, bias = init.get(attention.input[1]), init.get(attention.input[2])
    hidden = inverse.shape[0]
    if weight is None or bias is None or list(weight.dims) != [weight.dims[0], 3 * hidden]:
        return False
    w = numpy_helper.to_array(weight).astype(np.float32).copy()
    b = numpy_helper.to_array(bias).astype(np.float32).copy()
    w[:, 2 * hidden:] *= inverse[None, :]
    b[2 * hidden:] *= inverse
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    return True


def _exact_after_bias(nodes: list, init: dict) -> list:
    """Rewrite int8 -> Add(exact) -> Add(bias) as int8 -> Add(bias) -> Add(exact), so that ORT
    fuses the bias Add into the INT8 MatMul (one node fewer). Other patterns stay as they are.
    (A 3-input Sum for exact + residual measured slower than the two Adds: see
    benchmarks/RESULTS.md.)"""
    import onnx

    readers = readers_of(nodes)
    drop, replace = set(), {}
    for node in nodes:
        if not node.name.endswith("_outlier_add"):
            continue
        after = readers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            continue
        bias_add = after[0]
        bias = [name for name in bias_add.input if name in init and len(init[name].dims) == 1]
        if len(bias) != 1:
            continue
        int8_part, exact = node.input
        biased = f"{int8_part}_biased"
        replace[id(bias_add)] = [
            onnx.helper.make_node("Add", [int8_part, bias[0]], [biased], name=bias_add.name),
            onnx.helper.make_node("Add", [biased, exact], list(bias_add.output), name=node.name)]
        drop.add(id(node))
    return [new for node in nodes if id(node) not in drop
            for new in replace.get(id(node), [node])]


def _outlier_path(node, rows: np.ndarray, picked: np.ndarray) -> tuple[list, list]:
    """Return (nodes, initializers) of Gather(input, picked, axis=-1) -> MatMul(rows)."""
    import onnx
    from onnx import numpy_helper

    index, weight = f"{node.name}_outlier_index", f"{node.name}_outlier_weight"
    inits = [numpy_helper.from_array(picked, index),
             numpy_helper.from_array(rows.astype(np.float32), weight)]
    gathered = f"{node.name}_outlier_in"
    return [onnx.helper.make_node("Gather", [node.input[0], index], [gathered], axis=-1,
                                  name=f"{node.name}{OUTLIER_GATHER_SUFFIX}"),
            onnx.helper.make_node("MatMul", [gathered, weight], [f"{node.name}_outlier_out"],
                                  name=f"{node.name}{OUTLIER_MATMUL_SUFFIX}")], inits


def resolve_outliers(node_names, patterns: dict[str, int]) -> dict[str, int]:
    """Map {regex over node names: k} to {node name: k} for the nodes of one graph."""
    import re

    resolved = {}
    for name in node_names:
        for pattern, k in patterns.items():
            if re.search(pattern, name):
                resolved[name] = k
    return resolved
