"""The FP16 variant: a bundle that says its precision, passes its own goldens and matches FP32."""

import edge_runtime
import numpy as np
import onnx
from edge_runtime.selftest import selftest

from edgefleet.model.bundle import verify
from edgefleet.model.fp16 import convert_fp16


def test_fp16_bundle_from_the_tiny_export(tiny, tmp_path):
    result = convert_fp16(tiny["fp32_dir"], tmp_path / "tiny-fp16", name="tiny-fp16")
    bundle = verify(result.bundle_dir)
    assert bundle.precision == "fp16" and bundle.quantization is None
    assert bundle.conversion["tool"] == "onnxruntime.transformers.float16"
    graph = onnx.load(str(result.bundle_dir / "model.onnx"))
    kinds = {init.data_type for init in graph.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds
    # inputs and outputs as the runtime expects them: ids in, float32 out
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.fp16_bytes < 0.6 * result.fp32_bytes

    model = edge_runtime.load(result.bundle_dir)
    assert selftest(model).passed
    reference = edge_runtime.load(tiny["bundle_dir"]).embed(["a cat sat on the mat"])
    got = model.embed(["a cat sat on the mat"])
    assert got.dtype == np.float32 and float((got * reference).sum()) > 0.99
