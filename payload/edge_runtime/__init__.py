"""On-device runtime: load an edgefleet bundle and embed, classify or answer with ONNX Runtime."""

__all__ = ["load", "EmbeddingModel", "BundleFormatError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use, so that a host tool reading only edge_runtime.golden does not
    # load ONNX Runtime and the tokenizers (a noticeable part of a deploy's start-up)
    if name in __all__:
        from edge_runtime import model

        return getattr(model, name)
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
