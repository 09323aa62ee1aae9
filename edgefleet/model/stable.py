"""Rewrite an FP32 BERT graph so that every FP32 op gives the same bits on x86 and arm64.

Dynamic INT8 rounds each activation to one of 256 levels; a last-bit difference before a
rounding step sometimes flips a level, and the flip grows through the later layers to the size
of the quantization noise itself (cosine ~0.9993 between arm64 and x86 for the same bundle).
Run op by op on the same inputs, ONNX Runtime 1.32's LayerNormalization, EmbedLayerNormalization,
Softmax, ReduceMean/ReduceSum, (Q)Attention and an INT8 MatMul with its bias fused differ in the
last bit between x86 (AVX-512) and arm64 (NEON); MatMul, Exp, Erf, Sqrt, Div, Add, Mul, Gather,
ReduceMax, DequantizeLinear, DynamicQuantizeLinear and an INT8 MatMul without bias do not. So:

- LayerNormalization (and the embedding's) becomes MatMul means (x @ 1/H) + elementwise ops;
- the fused Attention becomes MatMul (QKV, quantized) + Reshape + bias Add + per-head MatMuls
  + a softmax of ReduceMax, Exp and a sum taken by the P @ V MatMul;
- the bias of a MatMul followed by a residual Add is added to the residual first, so that ORT
  does not fuse it into the INT8 MatMul.

Nodes that must stay FP32 (means, sums, the attention core) are named with EXACT_SUFFIX.
"""

from __future__ import annotations

import numpy as np

from edgefleet.model.graph import EXACT_SUFFIX, readers_of

__all__ = ["EXACT_SUFFIX", "stabilize"]


class _Builder:
    def __init__(self, graph):
        self.graph, self.nodes, self.inits = graph, [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        import onnx

        self.nodes.append(onnx.helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _layer_norm(builder: _Builder, x: str, gamma: str, beta: str, eps: float, out: str, name: str,
                hidden: int) -> None:
    """out = (x - mean) / sqrt(var + eps) * gamma + beta, means as MatMuls with 1/hidden."""
    ones = f"{name}/mean_weight"
    if ones not in {i.name for i in builder.inits}:
        builder.const(ones, np.full((hidden, 1), 1.0 / hidden, np.float32))
    mean = builder.node("MatMul", [x, ones], f"{name}/mean", f"{name}/mean{EXACT_SUFFIX}")
    centered = builder.node("Sub", [x, mean], f"{name}/centered", f"{name}/sub")
    square = builder.node("Mul", [centered, centered], f"{name}/square", f"{name}/square")
    var = builder.node("MatMul", [square, ones], f"{name}/var", f"{name}/var{EXACT_SUFFIX}")
    eps_name = builder.const(f"{name}/eps", np.array(eps, np.float32))
    std = builder.node("Sqrt", [builder.node("Add", [var, eps_name], f"{name}/var_eps", f"{name}/add_eps")],
                       f"{name}/std", f"{name}/sqrt")
    normed = builder.node("Div", [centered, std], f"{name}/normed", f"{name}/div")
    scaled = builder.node("Mul", [normed, gamma], f"{name}/scaled", f"{name}/gamma")
    builder.node("Add", [scaled, beta], out, f"{name}/beta")


def _attr(node, name: str, default=None):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _attention(builder: _Builder, node, init: dict, mask: str | None,
               key_bias: str | None = None) -> None:
    """Unfuse a packed-QKV Attention (mask: the attention mask as floats [B, 1, S, 1];
    key_bias: 0 for a real key, -10000 for a padded one, [B, 1, 1, S])."""
    from onnx import numpy_helper

    heads = int(_attr(node, "num_heads"))
    weight = init[node.input[1]]
    hidden = int(weight.dims[1]) // 3
    size = hidden // heads
    name = node.name
    qkv = builder.node("MatMul", [node.input[0], node.input[1]], f"{name}/qkv", f"{name}/qkv_matmul")
    # a Reshape between the INT8 MatMul and its bias Add keeps ORT from fusing them
    rows = builder.node("Reshape", [qkv, builder.const(f"{name}/rows_shape", np.array([-1, 3 * hidden],
                                                                                      np.int64))],
                        f"{name}/qkv_rows", f"{name}/qkv_rows")
    bias = numpy_helper.to_array(init[node.input[2]]).astype(np.float32)
    with_bias = builder.node("Add", [rows, builder.const(f"{name}/qkv_bias", bias)], f"{name}/qkv_biased",
                             f"{name}/qkv_bias_add")
    qkv_shape = builder.node("Concat", [builder.node("Shape", [node.input[0]], f"{name}/in_shape",
                                                     f"{name}/in_shape", end=-1),
                                        builder.const(f"{name}/heads_shape",
                                                      np.array([3, heads, size], np.int64))],
                             f"{name}/qkv_shape", f"{name}/qkv_shape", axis=0)
    biased = builder.node("Reshape", [with_bias, qkv_shape], f"{name}/qkv_heads",
                          f"{name}/qkv_reshape")
    parts = {}
    for index, part, perm in ((0, "q", [0, 2, 1, 3]), (1, "k", [0, 2, 3, 1]),
                              (2, "v", [0, 2, 1, 3])):
        picked = builder.node("Gather", [biased, builder.const(f"{name}/{part}_index", np.array(index))],
                              f"{name}/{part}", f"{name}/{part}_gather", axis=2)
        parts[part] = builder.node("Transpose", [picked], f"{name}/{part}_t", f"{name}/{part}_t",
                                   perm=perm)
    scores = builder.node("MatMul", [parts["q"], parts["k"]], f"{name}/scores",
                          f"{name}/scores{EXACT_SUFFIX}")
    scale = builder.const(f"{name}/scale", np.array(1.0 / np.sqrt(size), np.float32))
    scaled = builder.node("Mul", [scores, scale], f"{name}/scaled", f"{name}/scale_mul")
    # Padded keys leave the softmax's max: a max taken over them shifts a short text's scores
    # by whatever its padding scored, and its exp() values then underflow or round differently
    # than when the text runs alone (batch invariance, edgefleet.model.per_row).
    masked = scaled if key_bias is None else builder.node("Add", [scaled, key_bias],
                                                          f"{name}/masked", f"{name}/key_mask")
    import onnx

    top = builder.node("ReduceMax", [masked], f"{name}/max", f"{name}/max", axes=[-1], keepdims=1)
    exp = builder.node("Exp", [builder.node("Sub", [masked, top], f"{name}/shifted", f"{name}/shift")],
                       f"{name}/exp", f"{name}/exp")
    # The row sums come out of the P @ V MatMul itself, a column appended to V (a separate
    # MatMul with one output column differs in the last bit across arches). Masked keys are
    # left out by zeroing their rows of V and of that column (the attention mask, 1 or 0 per
    # key): cheaper than adding a large negative number to every score.
    column_shape = builder.node("Concat", [builder.node("Shape", [parts["v"]], f"{name}/v_shape",
                                                        f"{name}/v_shape", end=-1),
                                           builder.const(f"{name}/one", np.array([1], np.int64))],
                                f"{name}/column_shape", f"{name}/column_shape", axis=0)
    if mask:
        column = builder.node("Expand", [mask, column_shape], f"{name}/keys", f"{name}/keys")
        kept = builder.node("Mul", [parts["v"], mask], f"{name}/v_kept", f"{name}/v_mask")
    else:
        column = builder.node("ConstantOfShape", [column_shape], f"{name}/keys", f"{name}/keys",
                              value=onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [1],
                                                            [1.0]))
        kept = parts["v"]
    values = builder.node("Concat", [kept, column], f"{name}/v_ones", f"{name}/v_ones", axis=-1)
    weighted = builder.node("MatMul", [exp, values], f"{name}/weighted",
                            f"{name}/context{EXACT_SUFFIX}")
    starts, ends, axes = (builder.const(f"{name}/{n}", np.array([v], np.int64))
                          for n, v in (("start", 0), ("end", size), ("axis", -1)))
    sliced = builder.node("Slice", [weighted, starts, ends, axes], f"{name}/weighted_v",
                          f"{name}/weighted_v")
    total = builder.node("Slice", [weighted, ends, builder.const(f"{name}/last", np.array([size + 1], np.int64)),
                                   axes],
                         f"{name}/sum", f"{name}/sum")
    context = builder.node("Div", [sliced, total], f"{name}/context", f"{name}/softmax_div")
    merged = builder.node("Transpose", [context], f"{name}/context_t", f"{name}/context_t",
                          perm=[0, 2, 1, 3])
    out_shape = builder.const(f"{name}/out_shape", np.array([0, 0, hidden], np.int64))
    builder.node("Reshape", [merged, out_shape], node.output[0], f"{name}/out_reshape")


def _unfusable(node, init: dict) -> bool:
    """True for a self-attention with a packed (H, 3H) initializer weight and bias, no past."""
    if len(node.input) < 3 or node.input[1] not in init or node.input[2] not in init:
        return False
    if _attr(node, "qkv_hidden_sizes") or _attr(node, "unidirectional", 0) or \
            len(node.input) > 4 and any(node.input[4:]) or len(node.output) > 1 and \
            any(node.output[1:]):
        return False
    dims = list(init[node.input[1]].dims)
    heads = int(_attr(node, "num_heads", 0))
    return len(dims) == 2 and dims[1] == 3 * dims[0] and heads > 0 and dims[0] % heads == 0


def _skip_layer_norm(builder: _Builder, node, init: dict) -> None:
    """SkipLayerNormalization: input + skip (+ bias) -> the stable norm; output 3 the sum."""
    x, skip, gamma = node.input[:3]
    beta = node.input[3] if len(node.input) > 3 and node.input[3] else None
    bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
    name = node.name
    total = builder.node("Add", [x, skip], f"{name}/sum" if bias or len(node.output) < 4 or
                         not node.output[3] else node.output[3], f"{name}/add_skip")
    if bias:
        sum_name = node.output[3] if len(node.output) > 3 and node.output[3] else f"{name}/biased"
        total = builder.node("Add", [total, bias], sum_name, f"{name}/add_bias")
    if beta is None:
        beta = builder.const(f"{name}/zero_beta", np.zeros(init[gamma].dims, np.float32))
    _layer_norm(builder, total, gamma, beta, float(_attr(node, "epsilon", 1e-12)), node.output[0],
                name, int(init[gamma].dims[0]))


def _embeddings(builder: _Builder, node, hidden: int) -> None:
    """Unfuse EmbedLayerNormalization: word + position + token type, then the stable norm."""
    ids, types, word, position, kind, gamma, beta = node.input[:7]
    name = node.name
    words = builder.node("Gather", [word, ids], f"{name}/words", f"{name}/word_gather")
    length = builder.node("Shape", [ids], f"{name}/length", f"{name}/length", start=1, end=2)
    count = builder.node("Squeeze", [length, builder.const(f"{name}/axis0", np.array([0], np.int64))],
                         f"{name}/count", f"{name}/count")
    positions = builder.node("Range", [builder.const(f"{name}/zero", np.array(0, np.int64)), count,
                                       builder.const(f"{name}/step", np.array(1, np.int64))],
                             f"{name}/positions", f"{name}/positions")
    place = builder.node("Gather", [position, positions], f"{name}/place", f"{name}/position_gather")
    segment = builder.node("Gather", [kind, types], f"{name}/segment", f"{name}/type_gather")
    total = builder.node("Add", [builder.node("Add", [words, segment], f"{name}/ws", f"{name}/add_type"),
                                 place], f"{name}/sum", f"{name}/add_position")
    _layer_norm(builder, total, gamma, beta, float(_attr(node, "epsilon", 1e-12)), node.output[0],
                f"{name}/norm", hidden)


def _bias_to_residual(nodes: list, init: dict) -> list:
    """MatMul -> Add(bias) -> Add(residual) becomes MatMul -> Add(Add(residual, bias))."""
    import onnx

    readers = readers_of(nodes)
    replace, drop = {}, set()
    for node in nodes:
        if node.op_type != "MatMul" or node.input[1] not in init:
            continue
        following = readers.get(node.output[0], [])
        if len(following) != 1 or following[0].op_type != "Add":
            continue
        bias_add = following[0]
        bias = [n for n in bias_add.input if n in init and len(init[n].dims) == 1]
        after = readers.get(bias_add.output[0], [])
        if len(bias) != 1 or len(after) != 1 or after[0].op_type != "Add":
            continue
        residual_add = after[0]
        residual = [n for n in residual_add.input if n != bias_add.output[0]][0]
        with_bias = f"{residual}_plus_{bias_add.name}"
        drop.add(id(bias_add))
        replace[id(residual_add)] = [
            onnx.helper.make_node("Add", [residual, bias[0]], [with_bias], name=bias_add.name),
            onnx.helper.make_node("Add", [node.output[0], with_bias],
                                  list(residual_add.output), name=residual_add.name)]
    return [new for node in nodes if id(node) not in drop
            for new in replace.get(id(node), [node])]


def _live(nodes: list, outputs: set[str]) -> list:
    """Drop nodes none of whose outputs is read (e.g. the mask index nobody uses now)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(name in read for name in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def stabilize(model, norms: bool = True):
    """Return a copy of an exported BERT graph rewritten as the module docstring says.

    norms=False keeps ORT's fused layer norms (faster, not arch-stable) and only unfuses the
    attention, so that its QKV MatMul can take per-row activation scales.
    """
    import copy

    import onnx

    model = copy.deepcopy(model)
    graph = model.graph
    init = {item.name: item for item in graph.initializer}
    builder = _Builder(graph)
    mask = key_bias = None
    for node in graph.node:
        if node.op_type == "Attention" and "attention_mask" in {i.name for i in graph.input}:
            floats = builder.node("Cast", ["attention_mask"], "stable/mask_float",
                                  "stable/mask_cast", to=onnx.TensorProto.FLOAT)
            mask = builder.node("Unsqueeze", [floats, builder.const("stable/mask_axes",
                                                         np.array([1, 3], np.int64))],
                                "stable/mask", "stable/mask_unsqueeze")
            offset = builder.node("Sub", [floats, builder.const("stable/one", np.array(1.0, np.float32))],
                                  "stable/mask_offset", "stable/mask_offset")
            scaled_offset = builder.node("Mul", [offset, builder.const("stable/big", np.array(10000.0, np.float32))],
                                         "stable/key_offset", "stable/key_offset")
            key_bias = builder.node("Unsqueeze", [scaled_offset, builder.const("stable/key_axes",
                                                               np.array([1, 2], np.int64))],
                                    "stable/key_bias", "stable/key_bias_unsqueeze")
            break
    # a fused Attention kept as it is still reads the embedding node's mask index
    kept = {name for node in graph.node if node.op_type == "Attention" and
            not _unfusable(node, init) for name in node.input}
    for node in graph.node:
        if not norms and "LayerNormalization" in node.op_type:
            builder.nodes.append(node)
        elif node.op_type == "LayerNormalization":
            hidden = int(init[node.input[1]].dims[0])
            _layer_norm(builder, node.input[0], node.input[1], node.input[2],
                        float(_attr(node, "epsilon", 1e-5)), node.output[0], node.name, hidden)
        elif node.op_type == "SkipLayerNormalization" and node.input[2] in init:
            _skip_layer_norm(builder, node, init)
        elif node.op_type == "EmbedLayerNormalization" and len(node.input) >= 7 and \
                (len(node.input) < 9 or not node.input[8]) and node.input[5] in init and \
                not kept & set(node.output[1:]):
            _embeddings(builder, node, int(init[node.input[5]].dims[0]))
        elif node.op_type == "Attention" and _unfusable(node, init):
            _attention(builder, node, init, mask, key_bias)
        else:
            builder.nodes.append(node)
    graph.initializer.extend(builder.inits)
    init = {item.name: item for item in graph.initializer}
    nodes = _bias_to_residual(builder.nodes, init)
    del graph.node[:]
    graph.node.extend(_live(nodes, {item.name for item in graph.output}))
    used = {name for node in graph.node for name in node.input}
    live_inits = [item for item in graph.initializer if item.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)
    return model
