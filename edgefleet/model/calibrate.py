"""Static INT8 (QDQ) with activation ranges calibrated on a text file.

The MatMuls get static QDQ (fixed activation scales: no per-call min/max pass); fused
Attention ops (graphs built with Recipe(arch_stable=False); the arch-stable graph has a QKV
MatMul instead), which ORT's QDQ quantizer leaves in FP32, are then quantized dynamically to
QAttention, so the QKV projection never falls back to an FP32 GEMM; embedding tables go INT8.
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader

from edgefleet.model.graph import WEIGHT_TYPE, fp32_by_design, graph_of, quantize_graph

__all__ = ["CALIBRATION_METHODS", "TextCalibrationReader", "quantize_static_graph"]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class TextCalibrationReader(CalibrationDataReader):
    """Feed one tokenized text per call (batch 1), as the device runs them.

    pad=True pads every text to the longest: ORT's histogram collectors (entropy,
    percentile) stack each tensor over all calls and need one shape.
    """

    def __init__(self, tokenizer, texts: list[str], input_names, pad: bool = False):
        if not texts:
            raise ValueError("calibration needs at least one text")
        from edgefleet.model.evaluate import encode_feeds

        length = max(len(tokenizer.encode(text).ids) for text in texts) if pad else 0
        self._feeds = [encode_feeds(tokenizer, text, set(input_names), length)
                       for text in texts]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_static_graph(src: Path, dst: Path, tokenizer, texts: list[str],
                          method: str = "minmax", per_channel: bool = True,
                          fp32_nodes: list[str] | tuple[str, ...] = ()) -> None:
    """Write dst: src with static QDQ MatMuls (activations QUInt8, weights QUInt8: graph.WEIGHT_TYPE), dynamic
    QAttention and INT8 embedding tables, leaving fp32_nodes (and outlier paths, the arch-stable
    graph's exact MatMuls) in FP32."""
    import contextlib
    import io
    import tempfile

    from onnx import TensorProto
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    graph = graph_of(src)
    present = {node.name for node in graph.node}
    excluded = [n for n in fp32_nodes if n in present] + fp32_by_design(present)
    inputs = [item.name for item in graph.input]
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="edgefleet-static-", dir=Path(dst).parent) as work:
        typed, qdq = Path(work) / "typed.onnx", Path(work) / "qdq.onnx"
        _infer_types(src, typed)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints histogram progress
            reader = TextCalibrationReader(tokenizer, texts, inputs, pad=method != "minmax")
            quantize_static(str(typed), str(qdq), reader,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=getattr(QuantType, WEIGHT_TYPE), nodes_to_exclude=excluded,
                            calibrate_method=calibrate,
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options={"DefaultTensorType": TensorProto.FLOAT,
                                           "OpTypesToExcludeOutputQuantization": ["MatMul"],
                                           "CalibTensorRangeSymmetric": False,
                                           "CalibMovingAverage": False})
        quantize_graph(qdq, dst, per_channel, fp32_nodes,
                       op_types_to_quantize=["Attention", "EmbedLayerNormalization", "Gather"])


def _infer_types(src: Path, dst: Path) -> None:
    """Write dst: src with every tensor's type known (ORT's symbolic inference knows the
    contrib ops), else quantize_static skips the MatMuls fed by Attention or BiasGelu."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True), str(dst))
