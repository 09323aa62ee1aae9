"""Read runtime.yaml into a typed RuntimeConfig; errors name the file and the key."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

# libyaml's safe loader when built in (it is: PyYAML imports it anyway): faster for a rendered
# runtime.yaml, the same result; safe either way.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["RuntimeConfig", "ThermalConfig", "LimitsConfig", "BatchingConfig", "ConfigError", "read_config",
           "parse_config", "is_loopback"]

log = logging.getLogger("edge_runtime")
LOG_LEVELS = ("debug", "info", "warning", "error")
GOVERNORS = ("performance", "powersave", "ondemand", "schedutil", "conservative", "userspace")


class ConfigError(ValueError):
    """runtime.yaml is unreadable or holds a value of the wrong kind."""


@dataclass(frozen=True)
class ThermalConfig:
    """Thermal guard: zones to watch ([] = all), soft and hard limits in °C, poll period."""

    zones: tuple[str, ...] = ()
    soft_c: float = 75.0
    hard_c: float = 85.0
    poll_s: float = 2.0


@dataclass(frozen=True)
class LimitsConfig:
    """Request limits of the HTTP API and the inference queue's depth."""

    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_text_chars: int = 10000
    queue_depth: int = 16


@dataclass(frozen=True)
class BatchingConfig:
    """Micro-batching of concurrent requests (batching.py): enabled is "auto" (batch only a
    batch-invariant bundle), True or False; at most max_batch texts a batch; a wait of at most
    max_wait_ms for more jobs, only while clients are concurrent."""

    enabled: bool | str = "auto"
    max_batch: int = 16
    max_tokens: int = 256  # texts x padded length of one model call (batching.group_by_length)
    max_wait_ms: float = 4.0


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings from runtime.yaml; None means "not given" (the CLI or the runtime decides)."""

    bundle: str | None = None
    threads: int | None = None
    workers: int | None = None  # inference threads calling the one session; None: tuning.choose_workers
    affinity: tuple[int, ...] = ()
    spin: bool = False
    nice: int | None = None
    host: str | None = None
    port: int | None = None
    token: str | None = None
    token_env: str | None = None  # the environment variable holding the token (filled by systemd)
    max_seq_len: int | None = None
    log_level: str | None = None
    target: str | None = None
    release: str | None = None
    sysfs_root: str = "/sys"
    governor: str | None = "performance"
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    provider_options: dict = field(default_factory=dict)
    require_providers: tuple[str, ...] = ()
    engine_cache_dir: str | None = None  # TensorRT engines, one directory per key (engine_cache.py)


INT_RANGES = {"threads": (1, 1024), "workers": (1, 1024), "port": (0, 65535), "max_seq_len": (2, 1 << 20),
              "nice": (-20, 19), "max_body_bytes": (64, 1 << 30), "max_texts": (1, 1 << 16),
              "max_text_chars": (1, 1 << 24), "queue_depth": (1, 1 << 16), "max_batch": (1, 256),
              "max_tokens": (1, 1 << 20)}
FLOAT_RANGES = {"soft_c": (-50.0, 200.0), "hard_c": (-50.0, 200.0), "poll_s": (0.01, 3600.0),
                "max_wait_ms": (0.0, 100.0)}


def is_loopback(host: str) -> bool:
    """Return True when host is a loopback address or 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int(source, key, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
    low, high = INT_RANGES[key]
    if not low <= value <= high:
        raise ConfigError(f"{source}: key {key!r} must be in {low}..{high}, got {value}")
    return value


def _float(source, key, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{source}: key {key!r} must be a number, got {value!r}")
    low, high = FLOAT_RANGES[key]
    if not low <= value <= high:
        raise ConfigError(f"{source}: key {key!r} must be in {low}..{high}, got {value}")
    return float(value)


def _string(source, key, value):
    if key in ("target", "release") and isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: key {key!r} must be a non-empty string, got {value!r}")
    if key == "token_env" and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ConfigError(f"{source}: key 'token_env' must name an environment variable, got {value!r}")
    if key == "log_level":
        if value.lower() not in LOG_LEVELS:
            raise ConfigError(f"{source}: key 'log_level' must be one of "
                              f"{', '.join(LOG_LEVELS)}, got {value!r}")
        return value.lower()
    if key == "governor" and value not in GOVERNORS:
        raise ConfigError(f"{source}: key 'governor' must be one of {', '.join(GOVERNORS)}, "
                          f"got {value!r}")
    return value


def _check(source: str, key: str, value):
    if value is None:
        return None
    if key in INT_RANGES:
        return _int(source, key, value)
    if key in FLOAT_RANGES:
        return _float(source, key, value)
    if key == "enabled":
        if not isinstance(value, bool) and value != "auto":
            raise ConfigError(f"{source}: key 'enabled' must be auto, true or false, "
                              f"got {value!r}")
        return value
    if key == "spin":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key 'spin' must be true or false, got {value!r}")
        return value
    if key == "affinity":
        if not isinstance(value, list) or not all(
                isinstance(cpu, int) and not isinstance(cpu, bool) and 0 <= cpu < 4096
                for cpu in value) or len(set(value)) != len(value):
            raise ConfigError(f"{source}: key 'affinity' must be a list of distinct CPU ids "
                              f"(0..4095), got {value!r}")
        return tuple(value)
    if key == "zones":
        if not isinstance(value, list) or not all(isinstance(z, str) and z for z in value):
            raise ConfigError(f"{source}: key 'thermal.zones' must be a list of zone names, "
                              f"got {value!r}")
        return tuple(value)
    return _string(source, key, value)


def _known_keys(data: dict, kind, source: str, prefix: str = "") -> set[str]:
    """Return the keys `kind` has; warn once about each key of `data` it does not."""
    known = {item.name for item in fields(kind)}
    for key in sorted(set(data) - known, key=str):
        log.warning("config_unknown_key file=%s key=%s%s (ignored)", source, prefix, key)
    return known


def _section(data, source: str, name: str, kind):
    if data is None:
        return kind()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key {name!r} must be a mapping, got {data!r}")
    known = _known_keys(data, kind, source, f"{name}.")
    values = {}
    for key in known:
        try:
            checked = _check(source, key, data.get(key))
        except ConfigError as error:
            raise ConfigError(str(error).replace(f"key {key!r}", f"key '{name}.{key}'")) from None
        if checked is not None:
            values[key] = checked
    return kind(**values)


PROVIDER_KEYS = ("providers", "provider_options", "require_providers")


def _names(source: str, key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
        raise ConfigError(f"{source}: key {key!r} must be a list of provider names, got {value!r}")
    return tuple(value)


def _provider_values(data: dict, source: str) -> dict:
    """Return the provider keys given in `data`, checked: names, options per provider, requirements."""
    values: dict = {}
    if data.get("providers") is not None:
        values["providers"] = _names(source, "providers", data["providers"])
    providers = values.get("providers", RuntimeConfig.providers)
    options = data.get("provider_options")
    if options is not None:
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: key 'provider_options' must be a mapping, got {options!r}")
        for name, values_of in options.items():
            if not isinstance(values_of, dict) or not all(
                    isinstance(k, str) and isinstance(v, (str, int, float, bool))
                    for k, v in values_of.items()):
                raise ConfigError(f"{source}: key 'provider_options.{name}' must be a mapping of "
                                  f"option names to values, got {values_of!r}")
        values["provider_options"] = dict(options)
    if data.get("require_providers") is not None:
        required = _names(source, "require_providers", data["require_providers"])
        for name in required:
            if name not in providers:
                raise ConfigError(f"{source}: key 'require_providers': {name} is not in "
                                  f"'providers' {list(providers)}")
        values["require_providers"] = required
    return values


def _cross_check(config: RuntimeConfig, source: str) -> None:
    if config.threads and config.affinity and config.threads != len(config.affinity):
        raise ConfigError(f"{source}: key 'threads' ({config.threads}) must equal the number "
                          f"of CPUs in 'affinity' ({len(config.affinity)})")
    if config.host and not is_loopback(config.host) and not config.token and config.token_env:
        raise ConfigError(f"{source}: key 'token_env' names {config.token_env}, which is not set: the runtime's "
                          f"unit sets it (EnvironmentFile=); to run by hand, export it")
    if config.host and not is_loopback(config.host) and not config.token:
        raise ConfigError(f"{source}: key 'token' is required when 'host' ({config.host}) "
                          "is not a loopback address")
    if config.thermal.soft_c >= config.thermal.hard_c:
        raise ConfigError(f"{source}: key 'thermal.soft_c' ({config.thermal.soft_c}) must be "
                          f"below 'thermal.hard_c' ({config.thermal.hard_c})")


def parse_config(data, source: str = "runtime.yaml") -> RuntimeConfig:
    """Validate a parsed runtime.yaml document (a mapping or None)."""
    if data is None:
        return RuntimeConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    known = _known_keys(data, RuntimeConfig, source)
    values = {"thermal": _section(data.get("thermal"), source, "thermal", ThermalConfig),
              "limits": _section(data.get("limits"), source, "limits", LimitsConfig),
              "batching": _section(data.get("batching"), source, "batching", BatchingConfig)}
    values.update(_provider_values(data, source))
    for key in known - {"thermal", "limits", "batching", *PROVIDER_KEYS}:
        checked = _check(source, key, data.get(key))
        if checked is not None:
            values[key] = checked
    if values.get("token_env") and not values.get("token"):
        # the token itself is kept out of this file (readable by any local account on a device)
        values["token"] = os.environ.get(values["token_env"]) or None
    if "governor" in data and data["governor"] is None:
        values["governor"] = None  # explicitly unset: report governors, judge no drift
    config = RuntimeConfig(**values)
    _cross_check(config, source)
    return config


def read_config(path) -> RuntimeConfig:
    """Read and validate a runtime.yaml file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(data, str(path))
