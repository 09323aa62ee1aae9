"""Where things live on the host: the repo root, the build dir, the inventory dir."""

from __future__ import annotations

from pathlib import Path

__all__ = ["repo_root", "build_dir", "targets_dir", "bundle_dir"]

DEFAULTS = {
    "targets_dir": "targets",
    "build_dir": "build",
    "bundle": "build/bundles/all-minilm-l6-v2-int8",
}


def repo_root() -> Path:
    """Return the directory holding tasks.py and the edgefleet package."""
    return Path(__file__).resolve().parent.parent


def _setting(c, key: str) -> Path:
    section = c.config.get("edgefleet", {}) if c is not None else {}
    value = section.get(key) or DEFAULTS[key]
    path = Path(value).expanduser()
    return path if path.is_absolute() else repo_root() / path


def build_dir(c) -> Path:
    """Return the build directory (config `edgefleet.build_dir`)."""
    return _setting(c, "build_dir")


def targets_dir(c) -> Path:
    """Return the inventory directory (config `edgefleet.targets_dir`)."""
    return _setting(c, "targets_dir")


def bundle_dir(c) -> Path:
    """Return the default bundle directory (config `edgefleet.bundle`)."""
    return _setting(c, "bundle")
