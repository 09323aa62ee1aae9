"""Fixtures for runtime tests: one tiny INT8 bundle per session, and a way to run the CLI."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Return the directory of a tiny random-BERT INT8 bundle."""
    from edgefleet.model.tiny import tiny_bundle as build

    return build(tmp_path_factory.mktemp("tiny-runtime"), seed=1)["bundle_dir"]


@pytest.fixture
def run_cli():
    """Run `python -m edge_runtime ARGS` with a bounded wait; return the CompletedProcess."""

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "edge_runtime", *map(str, args)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    return run
