"""Shared fixtures: keep the developer's own SSH config and keys out of every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hide_user_ssh(monkeypatch, tmp_path_factory):
    """Point HOME at an empty dir so ~/.ssh/config, keys and known_hosts never leak in."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield home


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def task_models(tmp_path_factory):
    """Tiny random BERTs with a classification and a QA head, exported and quantized once per
    session for tests/model and tests/runtime: {task: {"model_dir", "fp32_dir", "bundle_dir"}}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgefleet.model.tiny import tiny_bundle

    return {task: tiny_bundle(tmp_path_factory.mktemp(f"tiny-{task}"), seed=seed, task=task)
            for task, seed in (("classify", 2), ("qa", 3))}


@pytest.hookimpl(trylast=True)  # after -m / -k deselected theirs: only what runs is looked at
def pytest_collection_modifyitems(config, items):
    """Say which tiers run; CI runs all of them. The e2e tier runs last, and when it boots the lab
    VM, the VM's image is built in the background from the start (tests/e2e/e2e_lab.py)."""
    if os.environ.get("EDGEFLEET_FAST"):
        skip = pytest.mark.skip(reason="EDGEFLEET_FAST set: unit tier only")
        for item in items:
            if "integration" in item.keywords or "e2e" in item.keywords:
                item.add_marker(skip)
        return
    e2e = [item for item in items if "e2e" in item.keywords]
    items[:] = [item for item in items if "e2e" not in item.keywords] + e2e
    if (any(Path(str(item.fspath)).name.startswith("test_lab_vm") for item in e2e) and len(e2e) < len(items)
            and not config.option.collectonly):
        sys.path.insert(0, str(Path(__file__).parent / "e2e"))
        import e2e_lab

        e2e_lab.start_prebuild(Path(__file__).resolve().parents[1])
