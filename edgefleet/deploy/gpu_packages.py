"""Does a target's package set carry the onnxruntime its execution providers need? Pure.

PyPI's onnxruntime runs on CPU only and PyPI has no aarch64 onnxruntime-gpu: CUDA and TensorRT
on a Jetson need onnxruntime-gpu from a Jetson wheel source (packages.find_links or index_url).
"""

from __future__ import annotations

import re

from ..inventory import Target

__all__ = ["GPU_PACKAGE", "gpu_package_check"]

GPU_PACKAGE = "onnxruntime-gpu"
CPU = "CPUExecutionProvider"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_package_check(target: Target) -> tuple[str | None, str | None]:
    """Return (error, note): an error when the target requires an accelerator its packages cannot
    run, or pins onnxruntime-gpu for arm64 with no wheel source; a note when it will run on CPU."""
    s = target.settings
    accelerators = [p for p in s.providers if p != CPU]
    if not accelerators or s.ship != "venv":  # an image brings its own onnxruntime
        return None, None
    pinned = {_norm(name) for name in s.packages.pins}
    where = f"{target.name} ({target.source})"
    if GPU_PACKAGE in pinned:
        if s.arch == "arm64" and not (s.packages.find_links or s.packages.index_url):
            return (f"{where}: packages.pins has {GPU_PACKAGE}, but PyPI has no aarch64 {GPU_PACKAGE}: set "
                    "packages.find_links (or index_url) to Jetson wheels for its JetPack", None)
        return None, None
    required = [p for p in s.require_providers if p != CPU]
    if required:
        return (f"{where}: require_providers {', '.join(required)} needs {GPU_PACKAGE}, but its packages "
                f"(payload/requirements.txt + packages.pins) have only onnxruntime, which runs on CPU: pin "
                f"{GPU_PACKAGE} and set packages.find_links, or drop require_providers", None)
    return None, (f"{target.name}: providers {', '.join(accelerators)} need {GPU_PACKAGE}; its packages have "
                  "none, so it will run on CPUExecutionProvider")
