"""Read runtime.yaml into a typed RuntimeConfig; errors name the file and the key."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

__all__ = ["RuntimeConfig", "ConfigError", "read_config", "parse_config"]

log = logging.getLogger("edge_runtime")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """runtime.yaml is unreadable or holds a value of the wrong kind."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings from runtime.yaml; None means "not given"."""

    bundle: str | None = None
    threads: int | None = None
    host: str | None = None
    port: int | None = None
    max_seq_len: int | None = None
    log_level: str | None = None
    target: str | None = None
    release: str | None = None


def _check(source: str, key: str, value):
    if value is None:
        return None
    if key in ("threads", "port", "max_seq_len"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
        low, high = {"threads": (1, 1024), "port": (0, 65535), "max_seq_len": (2, 1 << 20)}[key]
        if not low <= value <= high:
            raise ConfigError(f"{source}: key {key!r} must be in {low}..{high}, got {value}")
        return value
    if key in ("target", "release") and isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: key {key!r} must be a non-empty string, got {value!r}")
    if key == "log_level" and value.lower() not in LOG_LEVELS:
        raise ConfigError(f"{source}: key 'log_level' must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {value!r}")
    return value.lower() if key == "log_level" else value


def parse_config(data, source: str = "runtime.yaml") -> RuntimeConfig:
    """Validate a parsed runtime.yaml document (a mapping or None)."""
    if data is None:
        return RuntimeConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    known = {item.name for item in fields(RuntimeConfig)}
    for key in sorted(set(data) - known, key=str):
        log.warning("config_unknown_key file=%s key=%s (ignored)", source, key)
    return RuntimeConfig(**{key: _check(source, key, data.get(key)) for key in known})


def read_config(path) -> RuntimeConfig:
    """Read and validate a runtime.yaml file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(data, str(path))
