"""Shared fixtures: keep the developer's own SSH config and keys out of every test."""

from __future__ import annotations

import os
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


def pytest_collection_modifyitems(config, items):
    """Say which tiers run; CI runs all of them."""
    if os.environ.get("EDGEFLEET_FAST"):
        skip = pytest.mark.skip(reason="EDGEFLEET_FAST set: unit tier only")
        for item in items:
            if "integration" in item.keywords or "e2e" in item.keywords:
                item.add_marker(skip)
