"""Per-board package pins: applied to the runtime's requirements, part of the env's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.device_env import pin_requirements
from edgefleet.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, pins, expected", [
    ("onnxruntime==1.32.0\nnumpy==2.4.6\n", {}, "onnxruntime==1.32.0\nnumpy==2.4.6\n"),
    ("# c\nonnxruntime==1.32.0\nnumpy==2.4.6\n", {"onnxruntime": "1.23.2"},
     "# c\nonnxruntime==1.23.2  # pinned by the board profile\nnumpy==2.4.6\n"),
    ("Py_YAML==6.0.4\n", {"py-yaml": "6.0.1"}, "py-yaml==6.0.1  # pinned by the board profile\n"),
    ("numpy==2.4.6\n", {"onnxruntime-gpu": "1.23.0"}, "numpy==2.4.6\nonnxruntime-gpu==1.23.0  # pinned by the board profile\n"),
])
def test_pin_requirements(text, pins, expected):
    assert pin_requirements(text, pins) == expected


@pytest.mark.parametrize("board, python", [("orin-nano", "3.10"), ("orin-agx", "3.10")])
def test_jetpack_boards_pin_what_exists_for_cp310(board, python):
    target = load_inventory(REPO / "tests" / "golden" / "inventory").target(f"{board}-golden")
    assert target.settings.python == python
    pinned = pin_requirements((REPO / "payload" / "requirements.txt").read_text(), target.settings.packages.pins)
    assert "onnxruntime==1.23.2" in pinned and "numpy==2.2.6" in pinned  # newest cp310 aarch64 wheels on PyPI
