"""edgefleet.model.per_row on a one-MatMul graph: each row quantized with its own scale."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.model.per_row import per_row_activations

WEIGHT = np.random.default_rng(0).integers(0, 256, size=(8, 3)).astype(np.uint8)


def _dynamic_int8_matmul():
    """x -> DynamicQuantizeLinear -> MatMulInteger(W, zp 128) -> Cast -> Mul(x_scale)."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "q_scale", "q_zp"], name="dq"),
             helper.make_node("MatMulInteger", ["q", "w", "q_zp", "w_zp"], ["acc"], name="mm"),
             helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["acc_f", "q_scale"], ["y"], name="rescale")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.uint8(128), "w_zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(x, levels, zero_point, ties_up):
    scale = np.maximum(np.abs(x).max(axis=1, keepdims=True) * np.float32(1.0 / levels),
                       np.float32(1e-30))
    scaled = (x / scale).astype(np.float32)
    q = np.floor(scaled + np.float32(0.5)) if ties_up else np.round(scaled)
    integer = (q.astype(np.int64)) @ (WEIGHT.astype(np.int64) - 128)
    return integer.astype(np.float32) * scale, q + zero_point


@pytest.mark.parametrize("options", [{}, {"truncate": True}, {"levels": 63, "zero_point": 64}])
def test_each_row_is_quantized_alone(options):
    model = per_row_activations(_dynamic_int8_matmul(), **options)
    ops = [node.op_type for node in model.graph.node]
    assert "DynamicQuantizeLinear" not in ops
    assert ("Round" in ops) != bool(options.get("truncate"))
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    x[2] *= 1000.0  # one loud row: per tensor it would flatten the others to a few levels
    x[3] = [127.0, 2.5, -2.5, 0.5, -0.5, 1.5, 0.0, 0.0]  # scale ~1: ties (truncate: up)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    expected, levels = _reference(x, options.get("levels", 127), options.get("zero_point", 128),
                                  options.get("truncate", False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert levels.min() >= 0 and levels.max() <= 2 * options.get("zero_point", 128) - 1
    # a row alone gives the same numbers as in the batch
    alone = session.run(None, {"x": x[:1]})[0]
    assert np.array_equal(alone[0], got[0])
    onnx.checker.check_model(model)
