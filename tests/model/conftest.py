"""Fixtures for model tests: a tiny random BERT taken through export and quantize once."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Return paths of the tiny model dir, its FP32 export and its INT8 bundle."""
    from edgefleet.model.tiny import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_classify(task_models):
    """Return paths of a tiny random BertForSequenceClassification, FP32 export, INT8 bundle."""
    return task_models["classify"]


@pytest.fixture(scope="session")
def tiny_qa(task_models):
    """Return paths of a tiny random BertForQuestionAnswering, FP32 export, INT8 bundle."""
    return task_models["qa"]
