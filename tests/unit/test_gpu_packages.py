"""Deploy refuses a target that requires a GPU provider its package set cannot run."""

from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.deploy.gpu_packages import gpu_package_check
from edgefleet.device_env import pin_requirements
from edgefleet.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def orin():
    return load_inventory(REPO / "targets").target("orin-01")


def _with(target, **changes):
    settings = target.settings
    packages = changes.pop("packages", None)
    if packages is not None:
        changes["packages"] = settings.packages.model_copy(update=packages)
    return replace(target, settings=settings.model_copy(update=changes))


@pytest.mark.parametrize("changes, error, note", [
    ({}, None, "will run on CPUExecutionProvider"),
    ({"require_providers": ["TensorrtExecutionProvider"]}, "require_providers TensorrtExecutionProvider needs "
     "onnxruntime-gpu", None),
    ({"require_providers": ["CUDAExecutionProvider"], "packages": {"pins": {"onnxruntime-gpu": "1.23.0"}}},
     "PyPI has no aarch64 onnxruntime-gpu", None),
    ({"require_providers": ["CUDAExecutionProvider"],
      "packages": {"pins": {"onnxruntime-gpu": "1.23.0"}, "find_links": "/srv/jetson-wheels"}}, None, None),
    ({"providers": ["CPUExecutionProvider"], "provider_options": {}}, None, None),
    ({"ship": "image", "require_providers": ["CUDAExecutionProvider"]}, None, None),
])
def test_gpu_package_check(orin, changes, error, note):
    got_error, got_note = gpu_package_check(_with(orin, **changes))
    assert (error is None and got_error is None) or (error in got_error and got_error.startswith("orin-01 ("))
    assert (note is None and got_note is None) or note in got_note


def test_pinning_onnxruntime_gpu_replaces_onnxruntime():
    text = "onnxruntime==1.32.0\nnumpy==2.4.6\n"
    pinned = pin_requirements(text, {"onnxruntime-gpu": "1.23.0"})
    lines = [line for line in pinned.splitlines() if not line.startswith("#")]
    assert not any(line.startswith("onnxruntime==") for line in lines)
    assert "onnxruntime-gpu==1.23.0" in pinned and "numpy==2.4.6" in pinned


JETSON = REPO / "targets" / "examples" / "jetson"


@pytest.fixture(scope="module")
def jetson():
    return load_inventory(JETSON)


def _requirement_lines(target) -> list[str]:
    pinned = pin_requirements((REPO / "payload" / "requirements.txt").read_text(), target.settings.packages.pins)
    return [line.split("#")[0].strip() for line in pinned.splitlines() if line.split("#")[0].strip()]


@pytest.mark.parametrize("device, gpu_pin, source", [
    ("cell-orin-61", "onnxruntime-gpu==1.23.0", ("index_url", "https://pypi.jetson-ai-lab.io/jp6/cu126")),
    ("cell-orin-60", "onnxruntime-gpu==1.18.0", ("find_links", "/srv/wheels/jetpack-6.0")),
])
def test_jetpack_groups_pin_onnxruntime_gpu_instead_of_the_boards_onnxruntime(jetson, device, gpu_pin, source):
    """A JetPack group over an Orin board profile (which pins PyPI's CPU onnxruntime): the device gets
    onnxruntime-gpu from the group's wheel source and no onnxruntime (both are the same module)."""
    target = jetson.target(device)
    lines = _requirement_lines(target)
    assert gpu_pin in lines and not any(line.startswith("onnxruntime==") for line in lines), lines
    assert getattr(target.settings.packages, source[0]) == source[1]
    assert gpu_package_check(target) == (None, None)


def test_an_orin_without_a_jetpack_group_is_told_it_runs_on_cpu(jetson):
    error, note = gpu_package_check(jetson.target("cell-orin-cpu"))
    assert error is None and "will run on CPUExecutionProvider" in note
