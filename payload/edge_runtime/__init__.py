"""On-device runtime: load an edgefleet bundle and embed, classify or answer with ONNX Runtime."""

from edge_runtime.model import BundleFormatError, EmbeddingModel, load

__all__ = ["load", "EmbeddingModel", "BundleFormatError"]
__version__ = "0.1.0"
