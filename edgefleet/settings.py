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
    max_body_bytes: int = Field(default=1048576, ge=64, le=1 << 30, description="request body limit (413 above)")
    max_texts: int = Field(default=64, ge=1, le=1 << 16, description="texts per request")
    max_text_chars: int = Field(default=10000, ge=1, le=1 << 20,
                                description="characters per text (and per question or context)")
    queue_depth: int = Field(default=16, ge=1, le=4096,
                             description="the inference queue; 503 when full, not ready when full for 10 s")


class RuntimeSettings(_Strict):
    threads: int | None = Field(default=None, ge=1, le=256, description=(
        "ORT intra-op threads; null: one per affinity core; must equal the number of affinity cores"))
    workers: int | None = Field(default=None, ge=1, le=256, description=(
        "inference threads calling the one model at once, sharing its ORT threads; null: 2 where the "
        "runtime has 2 threads or more, else 1; at most the threads (docs/runtime.md)"))
    affinity: list[int] | None = Field(default=None, description="cores the runtime pins itself to; null: `big_cores`")
    spin: bool = Field(default=False, description="let ORT's threads spin while waiting")
    nice: int = Field(default=0, ge=-20, le=19, description=(
        "the service's nice value (set by systemd's `Nice=`, so the service holds no capability; "
        "a nice ulimit in the image variant)"))
    host: str = Field(default="127.0.0.1", description=(
        "address the API binds; not loopback (127.0.0.1, ::1, localhost) needs `runtime.token`"))
    port: int = Field(default=8080, ge=1, le=65535, description="port the API binds")
    max_seq_len: int | None = Field(default=None, ge=8, le=8192, description=(
        "lower the bundle's max sequence length; null: the bundle's; above the bundle's is refused at deploy"))
    # printable ASCII without blanks, quotes or backslashes: it is written, single-quoted, into
    # the root-only environment file systemd reads (secrets/runtime.env), never into runtime.yaml
    token: str | None = Field(default=None, pattern=r"^[\x21\x23-\x26\x28-\x5b\x5d-\x7e]+$", description=(
        "bearer token for the API (kept in a root-only file on the device, not in runtime.yaml)"))
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info",
                                                                    description="the runtime's log level")
    memory_max: str = Field(default="1G", pattern=r"^[0-9]+[KMGT]?$",
                            description="systemd `MemoryMax=` (docker `--memory` for images)")
    limits: LimitSettings = Field(default=LimitSettings(), description="request limits of the HTTP API")

    @model_validator(mode="after")
    def _token_off_loopback(self):
        if self.host not in LOOPBACK and not self.token:
            raise ValueError(f"token is required when host is not loopback (host {self.host!r})")
        return self


class HealthSettings(_Strict):
    """The deploy's health gate: readiness, then the model judged on the device."""

    ready_timeout_s: float = Field(default=120.0, gt=0, description="how long the gate waits for `/readyz`")
    warmup_s: float = Field(default=900.0, gt=0, description=(
        "how long the gate waits while the runtime builds its TensorRT engine (`/readyz` building_engine); "
        "`ready_timeout_s` applies again once the build is over"))
    latency_budget_ms: float | None = Field(default=None, gt=0, description=(
        "p95 at batch 1, on the device; null: not judged"))
    rss_budget_mib: float | None = Field(default=None, gt=0, description=(
        "the service's RSS after the check; null: not judged"))
    latency_rounds: int = Field(default=3, ge=1, le=50, description="times each golden text is sent for the p95")
    max_regression: float | None = Field(default=0.25, gt=0, description=(
        "a p95 worse than the committed release's by more than this fraction fails the gate; null: not judged"))
    regression_min_ms: float = Field(default=2.0, ge=0, description=(
        "...and by more than this many ms (the probe's noise floor on a fast model)"))


class BundleSettings(_Strict):
    """The bundle variant a target takes from a bundle set: int8 for CPUs, fp16 for GPU providers."""

    precision: Literal["int8", "int8-static", "fp32", "fp16"] = Field(default="int8", description=(
        "the bundle variant taken from a bundle set (`<model>-int8/`, `<model>-fp16/`, ...); set here "
        "(group or device), it wins over the choice `tune` recorded for the board class"))


class DeploySettings(_Strict):
    """Device-side housekeeping: how many releases stay, when a deploy lock counts as stale."""

    keep_releases: int = Field(default=3, ge=2, le=100, description=(
        "releases kept after a commit (the active and the previous always stay)"))
    lock_ttl_s: float = Field(default=3600.0, ge=60, description="a deploy lock older than this may be broken")
    command_timeout_s: float = Field(default=900.0, ge=1, description=(
        "the longest one device command may run (a batch of steps is one command; a slow board under "
        "load unpacks its packages within it)"))
    device_deadline_s: float = Field(default=3600.0, ge=1, description=(
        "the longest one device's deploy may take before its next step fails (a rollback, if it had "
        "switched, gets the command timeout again)"))


class ThermalSettings(_Strict):
    zones: list[str] = Field(default_factory=list, description=(
        "thermal zones watched, by name (`thermal_zoneN`) or type; []: every zone"))
    soft_c: float = Field(default=75.0, gt=0, lt=150, description=(
        "above it the runtime spaces inferences out; must be below `hard_c`"))
    hard_c: float = Field(default=85.0, gt=0, lt=150, description=(
        "above it the runtime refuses inference (503, `/readyz` not ready) until below `soft_c`"))
    poll_s: float = Field(default=2.0, gt=0, le=600, description="how often the runtime reads the zones")

    @model_validator(mode="after")
    def _soft_below_hard(self):
        if self.soft_c >= self.hard_c:
            raise ValueError(f"soft_c ({self.soft_c}) must be below hard_c ({self.hard_c})")
        return self


class PowerSettings(_Strict):
    nvpmodel: int | None = Field(default=None, ge=0, le=15, description="Jetson power mode (`nvpmodel -m N`)")
    jetson_clocks: bool = Field(default=False, description="run `jetson_clocks`")


class PackageSettings(_Strict):
    """Per-board runtime package pins (override payload/requirements.txt) and extra wheel sources."""

    pins: dict[str, str] = Field(default_factory=dict, description=(
        "runtime package pins (name: version, plain `[A-Za-z0-9._-]+`) that override payload/requirements.txt"))
    find_links: str | None = Field(default=None, description=(
        "a directory or URL of wheels (e.g. Jetson onnxruntime-gpu)"))
    index_url: str | None = Field(default=None, description="another package index")

    @model_validator(mode="after")
    def _pins_are_plain(self):
        import re
        for name, version in self.pins.items():
            if not re.match(_PIN, name) or not re.match(_PIN, str(version)):
                raise ValueError(f"pin {name}=={version} must be a plain name and version")
        return self


class MenderSettings(_Strict):
    """How `mender.artifact` labels this board's artifacts (docs/mender.md)."""

    device_type: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$", description=(
        "the Mender device type of the board class (`mender.artifact`, [mender.md](mender.md)); "
        "null: the board's name"))


class Settings(_Strict):
    """Everything a board, a group or a device may set."""

    arch: Literal["arm64", "amd64"] = Field(description="the device's architecture (packages resolved for it)")
    python: str = Field(pattern=r"^3\.\d+$", description=(
        "the device's `python3` as \"3.N\" (packages resolved for its ABI, e.g. cp311)"))
    root: str = Field(default="/opt/edgefleet", pattern=r"^/[A-Za-z0-9._/-]*$", description="the device root")
    service_user: str = Field(default="edgefleet", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                              description="the unprivileged user the service runs as")
    sudo: bool = Field(default=False, description=(
        "log in as an unprivileged user and run root-only steps through `sudo -n`"))
    big_cores: list[int] = Field(default_factory=list, description=(
        "the cores inference runs on (each below the board's `cores`); affinity and threads follow them"))
    governor: str = Field(default="performance", pattern=r"^[a-z_]+$",
                          description="cpufreq governor set per policy by the tuning unit")
    thermal: ThermalSettings = Field(default=ThermalSettings(), description="the runtime's thermal guard")
    providers: list[Provider] = Field(default_factory=_cpu_only, description=(
        "execution providers, preferred first; distinct, `CPUExecutionProvider` last"))
    provider_options: dict[Provider, dict[str, ProviderOption]] = Field(default_factory=dict, description=(
        "ONNX Runtime options per provider, e.g. `TensorrtExecutionProvider: {trt_fp16_enable: true}`"))
    require_providers: list[Provider] = Field(default_factory=list, description=(
        "accelerators the device must run on: a fallback to CPU then fails the health gate"))
    power: PowerSettings = Field(default=PowerSettings(), description="Jetson power settings")
    packages: PackageSettings = Field(default=PackageSettings(), description="the runtime's Python packages")
    runtime: RuntimeSettings = Field(default=RuntimeSettings(), description="the on-device runtime")
    health: HealthSettings = Field(default=HealthSettings(), description="the deploy's health gate")
    bundle: BundleSettings = Field(default=BundleSettings(), description="the bundle variant")
    deploy: DeploySettings = Field(default=DeploySettings(), description="device-side housekeeping")
    mender: MenderSettings = Field(default=MenderSettings(), description="Mender artifacts of this board class")
    emulated: bool = Field(default=False, description="an emulated device: latency and speed never judged")
    ship: Literal["venv", "image"] = Field(default="venv", description=(
        "how the runtime reaches the device: `venv` (payload and packages unpacked, run by the device's "
        "python3) or `image` (the runtime image for its arch, run by its docker)"))

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
        workers, threads = self.runtime.workers, self.threads
        if workers is not None and threads is not None and workers > threads:
            raise ValueError(f"runtime.workers ({workers}) must be at most the runtime's threads ({threads}): "
                             "more model calls than threads only queue on the same cores")
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
