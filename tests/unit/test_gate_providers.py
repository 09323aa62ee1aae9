"""The gate's judgement of execution providers: a fallback warns, a required one missing fails."""

import pytest

from edgefleet.deploy.providers import FALLBACK, fallback_warning, provider_verdict

ORIN = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = {"requested": ORIN, "active": ["CPUExecutionProvider"]}


@pytest.mark.parametrize("reported, requested, required, failure, warning", [
    (CPU_ONLY, ORIN, [], None, "TensorrtExecutionProvider, CUDAExecutionProvider not offered"),
    (CPU_ONLY, ORIN, ["CUDAExecutionProvider"], "required execution provider CUDAExecutionProvider is not active",
     None),
    ({"requested": ORIN, "active": ORIN}, ORIN, ["TensorrtExecutionProvider"], None, None),
    ({"requested": ["CPUExecutionProvider"], "active": ["CPUExecutionProvider"]}, ["CPUExecutionProvider"], [],
     None, None),
    # judged against the inventory, not the device's (possibly edited) runtime.yaml
    ({"requested": ["CPUExecutionProvider"], "active": ["CPUExecutionProvider"]}, ORIN, [], None,
     "CUDAExecutionProvider not offered"),
    # an older runtime that does not report providers: unknown, which only a requirement fails
    (None, ORIN, [], None, None),
    ({"active": "CPU"}, ORIN, ["CUDAExecutionProvider"], "did not report its execution providers", None),
])
def test_provider_verdict(reported, requested, required, failure, warning):
    failures, warnings = provider_verdict(reported, requested, required)
    assert (failure is None) == (not failures) and all(failure in f for f in failures)
    assert (warning is None) == (not warnings) and all(warning in w and w.startswith(FALLBACK) for w in warnings)


def test_fallback_warning_for_status():
    assert fallback_warning(CPU_ONLY).endswith("running on CPUExecutionProvider")
    assert fallback_warning({"requested": ORIN, "active": ORIN}) is None
    assert fallback_warning("garbage") is None


@pytest.mark.parametrize("reported, notes", [
    ({"engine_cache": {"key": "0123456789abcdef", "source": "model", "build_s": 312.4}},
     ["TensorRT engine 0123456789ab: session created from model.onnx in 312.4 s on the device "
      "(an engine build, or ORT's engine files)"]),
    ({"engine_cache": {"key": "0123456789abcdef", "source": "context model", "build_s": None}},
     ["TensorRT engine 0123456789ab loaded from the device's cache"]),
    ({"engine_cache": None}, []), ({"engine_cache": "x"}, []), ("garbage", []),
    ({"engine_cache": {"key": "k", "source": "model", "build_s": True}}, []),  # device data of the wrong shape
])
def test_engine_note(reported, notes):
    from edgefleet.deploy.providers import engine_note
    assert engine_note(reported) == notes
