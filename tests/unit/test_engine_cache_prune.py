"""Prune keeps a TensorRT engine cache while a kept release has its model, pure (the lab test runs
the device side)."""

import json

import pytest

from edgefleet.deploy.prune import listing_command, parse_caches, parse_listing, unused_caches

MODEL, WEIGHTS, OLD = "a" * 64, "b" * 64, "c" * 64
MANIFESTS = {"r1": ("m" * 64, {"files": {"bundle/model.onnx": MODEL, "bundle/model.onnx.data": WEIGHTS}}),
             "r0": ("n" * 64, {"files": {"bundle/model.onnx": OLD}})}


def key(*shas):
    return {"key": "k", "model_files": dict(zip(("model.onnx", "model.onnx.data"), shas, strict=False))}


@pytest.mark.parametrize("caches, kept, dead", [
    ({"0123456789abcdef01234567": key(MODEL, WEIGHTS)}, ["r1"], []),
    ({"0123456789abcdef01234567": key(MODEL, WEIGHTS)}, ["r0"], ["0123456789abcdef01234567"]),
    ({"0123456789abcdef01234567": key(OLD)}, ["r1"], ["0123456789abcdef01234567"]),  # no kept release has it
    ({"0123456789abcdef01234567": key(OLD)}, ["r1", "r0"], []),  # a rollback target's model keeps its engine
    ({"0123456789abcdef01234567": key(MODEL, OLD)}, ["r1"], ["0123456789abcdef01234567"]),  # other weights
    ({"0123456789abcdef01234567": None}, ["r1"], ["0123456789abcdef01234567"]),  # never finished
    ({"0123456789abcdef01234567": {"model_files": "x"}}, ["r1"], ["0123456789abcdef01234567"]),
    ({"timing-0123456789ab": None, "notes": None}, ["r1"], []),  # only key directories are ever touched
])
def test_unused_caches(caches, kept, dead):
    assert unused_caches(caches, MANIFESTS, kept) == dead


def test_the_listing_carries_each_caches_key_json_on_one_line():
    command = listing_command("/opt/edgefleet")
    assert '"$root"/cache/trt/*/' in command and "key.json" in command
    doc = json.dumps(key(MODEL), indent=1).replace("\n", "")
    output = (f'{{"current": "r1", "history": []}}\n--releases--\nr1 {"m" * 64} {{"files": {{}}}}\n--envs--\n'
              f"--objects--\n{MODEL}\n--caches--\n0123456789abcdef01234567 {doc}\ntiming-1 \nbad {{not json\n")
    assert parse_listing(output)[4] == {MODEL}  # the caches are not objects
    caches = parse_caches(output.partition("--caches--")[2])
    assert caches == {"0123456789abcdef01234567": key(MODEL), "timing-1": None, "bad": None}
