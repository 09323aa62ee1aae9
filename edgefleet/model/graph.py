"""Node names and graph helpers shared by the rewrites (smooth, stable) and the quantizers.

The rewrites name the nodes that must stay FP32 (an outlier path's MatMul, the arch-stable
graph's means, sums and attention core); the quantizers read those names to leave them alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

__all__ = ["EXACT_SUFFIX", "OUTLIER_MATMUL_SUFFIX", "OUTLIER_GATHER_SUFFIX", "fp32_by_design",
           "readers_of", "graph_of", "outlier_counts", "quantize_graph"]

# nodes of the arch-stable graph (edgefleet.model.stable) that must stay FP32
EXACT_SUFFIX = "_exact"
# the exact FP32 path that edgefleet.model.smooth splits off a MatMul: Gather -> MatMul -> Add
OUTLIER_GATHER_SUFFIX = "_outlier_gather"
OUTLIER_MATMUL_SUFFIX = "_outlier_matmul"


# Weights as unsigned 8-bit (U8U8 with the uint8 activations), not signed (U8S8): on an x86 CPU
# without VNNI (AVX2 only, e.g. many AMD EPYC and older Intel hosts, and amd64 boards) ONNX
# Runtime computes U8S8 with VPMADDUBSW, whose int16 pair sums saturate, and a BERT's INT8
# outputs drift far from FP32 (worst on batches). U8U8 never saturates on any CPU, so the same
# bundle is right on every host that checks it and every device that runs it; ARM's dot-product
# kernels take it as they take U8S8. See ORT's quantization docs ("reduce_range ... non-VNNI").
WEIGHT_TYPE = "QUInt8"


def fp32_by_design(names) -> list[str]:
    """Return the names (in their order) of nodes the rewrites meant to stay FP32."""
    return [name for name in names if name.endswith((OUTLIER_MATMUL_SUFFIX, EXACT_SUFFIX))]


def readers_of(nodes) -> dict[str, list]:
    """Return, for each tensor name, the nodes that take it as an input (in graph order)."""
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def graph_of(path: Path):
    """Return the graph of an ONNX file without loading its external weights."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def outlier_counts(path: Path) -> dict[str, int]:
    """Return {MatMul name: outlier channels} of a smoothed graph (from its Gather indices)."""
    graph = graph_of(path)
    dims = {item.name: (list(item.dims) or [1])[0] for item in graph.initializer}
    suffix = OUTLIER_GATHER_SUFFIX
    return {n.name[: -len(suffix)]: int(dims.get(n.input[1], 0)) for n in graph.node
            if n.name.endswith(suffix)}


@contextmanager
def quiet_ort_quantizer():
    """Hold back the root-logger warnings ORT's quantizer prints (20-40 a model: "run
    pre-processing", "failed to infer data type" for contrib-op outputs, which DefaultTensorType
    answers); one summary line goes to this module's logger at debug level."""
    import logging

    held: list[logging.LogRecord] = []

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name == "root" and record.levelno <= logging.WARNING:
                held.append(record)
                return False
            return True

    root = logging.getLogger()
    hold = _Hold()
    handlers = list(root.handlers) or [logging.lastResort]
    root.addFilter(hold)
    for handler in handlers:
        if handler is not None:
            handler.addFilter(hold)
    try:
        yield
    finally:
        root.removeFilter(hold)
        for handler in handlers:
            if handler is not None:
                handler.removeFilter(hold)
        if held:
            logging.getLogger(__name__).debug("onnxruntime quantizer: %d warnings held back",
                                              len(held))


def quantize_graph(src: Path, dst: Path, per_channel: bool = True,
                   fp32_nodes: list[str] | tuple[str, ...] = (), weight_type: str = WEIGHT_TYPE,
                   **extra) -> None:
    """Dynamic INT8 of src into dst, leaving fp32_nodes (those present) in FP32."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = graph_of(src).node
    present = {node.name for node in nodes}
    # outlier paths (edgefleet.model.smooth) and the arch-stable graph's means, sums and
    # attention core (edgefleet.model.stable) stay FP32 by design
    fp32_nodes = list(fp32_nodes) + fp32_by_design(present)
    excluded = [name for name in fp32_nodes if name in present]
    # ORT's quantizer first rewrites each Gemm (a classify head's pooler and classifier) into
    # <name>_MatMul + <name>_Add and then matches nodes_to_exclude against the new names
    gemms = {node.name for node in nodes if node.op_type == "Gemm"}
    excluded += [f"{name}_MatMul" for name in excluded if name in gemms]
    with quiet_ort_quantizer():
        quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, weight_type),
                         per_channel=per_channel,
                         nodes_to_exclude=excluded,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT}, **extra)
