"""The typed settings a board profile, a group or a device may set (validated with pydantic)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Settings", "RuntimeSettings", "SETTING_KEYS", "PROVIDERS", "LOOPBACK"]

Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
PROVIDERS: tuple[str, ...] = get_args(Provider)


LOOPBACK = ("127.0.0.1", "::1", "localhost")
_PIN = r"^[A-Za-z0-9._-]+$"


def _cpu_only() -> list[Provider]:
    return ["CPUExecutionProvider"]


# an execution provider's options as ONNX Runtime takes them (it reads every value as a string)
ProviderOption = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitSettings(_Strict):
    max_body_bytes: int = Field(default=1048576, ge=64, le=1 << 30)
    max_texts: int = Field(default=64, ge=1, le=1 << 16)
    max_text_chars: int = Field(default=10000, ge=1, le=1 << 20)
    queue_depth: int = Field(default=16, ge=1, le=4096)


class RuntimeSettings(_Strict):
    threads: int | None = Field(default=None, ge=1, le=256)
    affinity: list[int] | None = None  # None: the board's big cores
    spin: bool = False
    nice: int = Field(default=0, ge=-20, le=19)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_seq_len: int | None = Field(default=None, ge=8, le=8192)
    token: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    memory_max: str = Field(default="1G", pattern=r"^[0-9]+[KMGT]?$")
    limits: LimitSettings = LimitSettings()

    @model_validator(mode="after")
    def _token_off_loopback(self):
        if self.host not in LOOPBACK and not self.token:
            raise ValueError(f"token is required when host is not loopback (host {self.host!r})")
        return self


class HealthSettings(_Strict):
    """The deploy's health gate: readiness, then the model judged on the device."""

    ready_timeout_s: float = Field(default=120.0, gt=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)  # p95, batch 1, on the device; None: not judged
    rss_budget_mib: float | None = Field(default=None, gt=0)  # the service's RSS after the check; None: not judged
    latency_rounds: int = Field(default=3, ge=1, le=50)  # times each golden text is sent for the p95
    # a release whose p95 is worse than the committed one's (state.json) by more than this fraction,
    # and by more than regression_min_ms, fails its gate; None: not judged
    max_regression: float | None = Field(default=0.25, gt=0)
    regression_min_ms: float = Field(default=2.0, ge=0)  # below this the probe's noise decides


class BundleSettings(_Strict):
    """The bundle variant a target takes from a bundle set: int8 for CPUs, fp16 for GPU providers."""

    precision: Literal["int8", "fp16"] = "int8"


class DeploySettings(_Strict):
    """Device-side housekeeping: how many releases stay, when a deploy lock counts as stale."""

    keep_releases: int = Field(default=3, ge=2, le=100)  # the active and the previous always stay
    lock_ttl_s: float = Field(default=3600.0, ge=60)  # a lock older than this may be broken


class ThermalSettings(_Strict):
    zones: list[str] = Field(default_factory=list)
    soft_c: float = Field(default=75.0, gt=0, lt=150)
    hard_c: float = Field(default=85.0, gt=0, lt=150)
    poll_s: float = Field(default=2.0, gt=0, le=600)

    @model_validator(mode="after")
    def _soft_below_hard(self):
        if self.soft_c >= self.hard_c:
            raise ValueError(f"soft_c ({self.soft_c}) must be below hard_c ({self.hard_c})")
        return self


class PowerSettings(_Strict):
    nvpmodel: int | None = Field(default=None, ge=0, le=15)  # Jetson power mode: nvpmodel -m N
    jetson_clocks: bool = False


class PackageSettings(_Strict):
    """Per-board runtime package pins (override payload/requirements.txt) and extra wheel sources."""

    pins: dict[str, str] = Field(default_factory=dict)
    find_links: str | None = None  # a directory or URL of wheels, e.g. onnxruntime-gpu for Jetson
    index_url: str | None = None

    @model_validator(mode="after")
    def _pins_are_plain(self):
        import re
        for name, version in self.pins.items():
            if not re.match(_PIN, name) or not re.match(_PIN, str(version)):
                raise ValueError(f"pin {name}=={version} must be a plain name and version")
        return self


class Settings(_Strict):
    """Everything a board, a group or a device may set."""

    arch: Literal["arm64", "amd64"]
    python: str = Field(pattern=r"^3\.\d+$")
    root: str = Field(default="/opt/edgefleet", pattern=r"^/[A-Za-z0-9._/-]*$")
    service_user: str = Field(default="edgefleet", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    sudo: bool = False
    big_cores: list[int] = Field(default_factory=list)
    governor: str = Field(default="performance", pattern=r"^[a-z_]+$")
    thermal: ThermalSettings = ThermalSettings()
    providers: list[Provider] = Field(default_factory=_cpu_only)
    provider_options: dict[Provider, dict[str, ProviderOption]] = Field(default_factory=dict)
    # accelerators the device must run on: a fallback to CPU then fails the health gate
    require_providers: list[Provider] = Field(default_factory=list)
    power: PowerSettings = PowerSettings()
    packages: PackageSettings = PackageSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    health: HealthSettings = HealthSettings()
    bundle: BundleSettings = BundleSettings()
    deploy: DeploySettings = DeploySettings()
    emulated: bool = False
    # how the runtime reaches the device: `venv` (payload + packages unpacked on the device, run
    # by the device's python3) or `image` (the runtime image for its arch, run by its docker)
    ship: Literal["venv", "image"] = "venv"

    @model_validator(mode="after")
    def _consistent(self):
        distinct = len(set(self.providers)) == len(self.providers)
        if not self.providers or self.providers[-1] != "CPUExecutionProvider" or not distinct:
            raise ValueError(f"providers must be distinct and end with CPUExecutionProvider (got {self.providers})")
        for name in [*self.provider_options, *self.require_providers]:
            if name not in self.providers:
                raise ValueError(f"{name} is not in providers {self.providers}")
        if "CPUExecutionProvider" in self.require_providers:
            raise ValueError("require_providers names accelerators; CPUExecutionProvider is always there")
        if self.runtime.threads is not None and self.affinity and self.runtime.threads != len(self.affinity):
            raise ValueError(f"runtime.threads ({self.runtime.threads}) must equal the number of cores in the "
                             f"affinity {self.affinity} (set runtime.affinity to fewer cores instead)")
        return self

    @property
    def affinity(self) -> list[int]:
        """Return the CPUs the runtime pins itself to: runtime.affinity, else the big cores."""
        return list(self.runtime.affinity if self.runtime.affinity is not None else self.big_cores)

    @property
    def threads(self) -> int | None:
        """Return the intra-op thread count: runtime.threads, else one per affinity core."""
        return self.runtime.threads or (len(self.affinity) or None)

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


SETTING_KEYS = set(Settings.model_fields)
