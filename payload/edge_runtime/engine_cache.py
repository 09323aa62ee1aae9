"""The TensorRT engine cache on the device: one directory per key, outside releases.

An engine is valid only for the same model, ONNX Runtime, TensorRT, GPU and L4T release, and
ORT does not check that itself (a stale engine is loaded and fails, or worse). So the runtime
keys a directory by all of them, plus the engine-shaping options (precision, profiles), and a
restart, a config-only release or a rollback to the same model finds its engine again.

`<engine_cache_dir>/<key>/`:
  key.json          what the directory serves (prune keeps it while a kept release uses the model)
  engines/          ORT's engine and profile files (trt_engine_cache_path)
  model_ctx.onnx    the engine-embedded EP-context model (ORT >= 1.17), loaded at later starts
`<engine_cache_dir>/timing-<id>/` holds TensorRT's timing cache, shared by every model on one
TensorRT version and GPU (it speeds up the build of a new model; a few MB, never pruned).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TRT", "EngineFacts", "EngineCache", "engine_key", "read_facts", "l4t_release", "tensorrt_version",
           "gpu_from_device_tree", "trt_options", "profile_shapes", "prepare", "model_files", "ort_at_least"]

log = logging.getLogger("edge_runtime")
TRT = "TensorrtExecutionProvider"
UNKNOWN = "unknown"
KEY_JSON = "key.json"
CONTEXT_MODEL = "model_ctx.onnx"
ENGINES = "engines"
KEY_CHARS = 24  # hex characters of the key: the directory's name
# Library directories where JetPack (and NVIDIA's x86 packages) put libnvinfer.so.<version>
LIB_DIRS = ("usr/lib/aarch64-linux-gnu", "usr/lib/x86_64-linux-gnu", "usr/local/cuda/lib64",
            "usr/local/cuda/targets/aarch64-linux/lib", "usr/lib64", "usr/lib")
# Jetson SoCs by their device-tree `compatible` entry: the GPU's compute capability (SM)
TEGRA_SM = {"nvidia,tegra234": "8.7", "nvidia,tegra194": "7.2", "nvidia,tegra186": "6.2",
            "nvidia,tegra210": "5.3"}
# Provider options that only say where files go: not part of what an engine is
PATH_OPTIONS = {"trt_engine_cache_path", "trt_timing_cache_path", "trt_ep_context_file_path",
                "trt_dump_ep_context_model", "trt_ep_context_embed_mode", "trt_engine_cache_enable",
                "trt_timing_cache_enable"}


@dataclass(frozen=True)
class EngineFacts:
    """What an engine depends on besides the model; "unknown" where the device does not say."""

    ort: str = UNKNOWN
    tensorrt: str = UNKNOWN
    gpu: str = UNKNOWN
    l4t: str = UNKNOWN


def l4t_release(text: str) -> str:
    """Return "R36.4.0" from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.0, ..."), else unknown."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text or "")
    return f"R{match.group(1)}.{match.group(2).rstrip('.')}" if match else UNKNOWN


def tensorrt_version(library_names) -> str:
    """Return the highest x.y.z of the libnvinfer.so.x.y.z names given, else unknown."""
    versions = []
    for name in library_names:
        match = re.fullmatch(r"libnvinfer\.so\.(\d+(?:\.\d+)+)", str(name))
        if match:
            versions.append(tuple(int(part) for part in match.group(1).split(".")))
    return ".".join(map(str, max(versions))) if versions else UNKNOWN


def gpu_from_device_tree(compatible: bytes, model: bytes = b"") -> str:
    """Return "sm 8.7 nvidia,tegra234 (<module>)" from /proc/device-tree/compatible (NUL-separated)."""
    entries = [e.decode("ascii", "replace").strip() for e in (compatible or b"").split(b"\0") if e.strip()]
    soc = next((e for e in entries if e in TEGRA_SM), None)
    if soc is None:
        return UNKNOWN
    # the first entry names the module (Orin Nano and AGX Orin share the SoC, not the GPU's size)
    board = (model or b"").decode("ascii", "replace").strip("\0 \n") or entries[0]
    return f"sm {TEGRA_SM[soc]} {soc} ({entries[0]}; {board})"


def _read(path: Path, limit: int = 4096) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return b""


def _nvidia_smi() -> str:
    """Return "sm <cc> <name>" from nvidia-smi (a discrete GPU), else unknown; bounded at 5 s."""
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return UNKNOWN
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    first = out.strip().splitlines()[0] if out.strip() else ""
    cap, _, name = first.partition(",")
    return f"sm {cap.strip()} {name.strip()}" if re.fullmatch(r"\d+\.\d+", cap.strip()) else UNKNOWN


def read_facts(root: str = "/", ort_version: str | None = None,
               nvidia_smi: Callable[[], str] = _nvidia_smi) -> EngineFacts:
    """Read what the device says about its TensorRT, GPU and L4T (under `root`); never raises."""
    base = Path(root)
    if ort_version is None:
        import onnxruntime

        ort_version = str(getattr(onnxruntime, "__version__", UNKNOWN))
    names: list[str] = []
    for lib_dir in LIB_DIRS:
        try:
            names += [entry.name for entry in os.scandir(base / lib_dir) if entry.name.startswith("libnvinfer.so.")]
        except OSError:
            continue
    gpu = gpu_from_device_tree(_read(base / "proc/device-tree/compatible"), _read(base / "proc/device-tree/model"))
    if gpu == UNKNOWN:
        gpu = nvidia_smi()
    release = l4t_release(_read(base / "etc/nv_tegra_release").decode("ascii", "replace"))
    return EngineFacts(ort=ort_version or UNKNOWN, tensorrt=tensorrt_version(names), gpu=gpu, l4t=release)


def engine_key(model: dict[str, str], facts: EngineFacts, engine_options: dict) -> str:
    """Return the cache key: a digest of the model's files (name -> sha256), the facts, and the
    options that shape an engine (where files go is left out). Pure."""
    import hashlib

    shaping = {str(k): str(v) for k, v in engine_options.items() if k not in PATH_OPTIONS}
    document = json.dumps({"model": dict(sorted(model.items())), "facts": asdict(facts), "options": shaping},
                          sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()[:KEY_CHARS]


def model_files(bundle_dir) -> dict[str, str]:
    """Return {name: sha256} of the model's graph and its external weights (hashed, not taken from bundle.json)."""
    import hashlib

    files = {}
    for name in ("model.onnx", "model.onnx.data"):
        path = Path(bundle_dir) / name
        if not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files[name] = digest.hexdigest()
    return files


def ort_at_least(version: str, wanted: tuple[int, int]) -> bool:
    """Return whether an ORT version string ("1.23.0", "1.18.0+cu126") is at least `wanted`."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return match is not None and (int(match.group(1)), int(match.group(2))) >= wanted


def profile_shapes(inputs: list[str], max_batch: int, max_seq_len: int, opt_seq_len: int = 128) -> dict[str, str]:
    """Return explicit TensorRT optimization profiles for the bundle's inputs (batch x sequence).

    With a profile for every dynamic input ORT builds the engine while the session is created;
    without, it builds at the first run and again whenever a request's shape falls outside what
    it has seen: minutes in the middle of serving.
    """
    def shapes(batch: int, seq: int) -> str:
        return ",".join(f"{name}:{batch}x{seq}" for name in inputs)

    return {"trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(1, min(opt_seq_len, max_seq_len)),
            "trt_profile_max_shapes": shapes(max_batch, max_seq_len)}


def trt_options(user: dict, profiles: dict[str, str], ort_version: str, cache_dir: Path | None,
                timing_dir: Path | None, dump_context: bool) -> dict:
    """Return the TensorRT provider options: the runtime's (cache, timing cache, profiles, the
    EP-context dump) with the user's provider_options winning wherever they set a key.

    Option names by ORT version (unknown names make ORT refuse the provider): profiles since
    1.15; trt_timing_cache_path and the EP-context options since 1.17. When the context model is
    dumped, ORT takes trt_engine_cache_path relative to the context model's directory.
    """
    options: dict = {}
    if ort_at_least(ort_version, (1, 15)):
        options.update(profiles)
    if cache_dir is not None:
        options.update({"trt_engine_cache_enable": True, "trt_timing_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir / ENGINES)})
        if ort_at_least(ort_version, (1, 17)):
            if timing_dir is not None:
                options["trt_timing_cache_path"] = str(timing_dir)
            if dump_context:
                options.update({"trt_dump_ep_context_model": True, "trt_engine_cache_path": ENGINES,
                                "trt_ep_context_file_path": str(cache_dir / CONTEXT_MODEL),
                                "trt_ep_context_embed_mode": 1})
    options.update(user or {})
    return options


@dataclass
class EngineCache:
    """One key's directory: where the session comes from and what to give TensorRT."""

    root: Path  # engine_cache_dir
    key: str
    model: dict[str, str]
    facts: EngineFacts
    engine_options: dict  # the TensorRT options of a build from model.onnx
    context_options: dict  # ...of a start from the context model (no dump)
    writable: bool = True
    source: str = "model"  # what the last session came from: "model" or "context model"
    build_s: float | None = None  # how long the last session from model.onnx took to create
    notes: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.root / self.key

    @property
    def context_model(self) -> Path:
        return self.dir / CONTEXT_MODEL

    def has_context_model(self) -> bool:
        return self.writable and self.context_model.is_file() and self.context_model.stat().st_size > 0

    def has_engine(self) -> bool:
        """Return whether a start needs no build: a context model, or ORT's engine files."""
        engines = self.dir / ENGINES
        return self.has_context_model() or (engines.is_dir() and any(p.suffix == ".engine"
                                                                     for p in engines.iterdir()))

    def discard_context_model(self, why: str) -> None:
        """Move a context model that failed aside (kept for a look, never loaded again)."""
        try:
            os.replace(self.context_model, self.dir / f"{CONTEXT_MODEL}.failed")
        except OSError:
            pass
        self.notes.append(f"context model discarded: {why}")
        log.warning("engine_context_model_discarded dir=%s why=%s", self.dir, why)

    def record(self, built_s: float | None = None) -> None:
        """Write key.json (atomically): what this directory serves; prune reads `model_files`."""
        if not self.writable:
            return
        document = {"key": self.key, "model_files": self.model, "facts": asdict(self.facts),
                    "context_model": self.has_context_model(), "source": self.source,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if built_s is not None:
            self.build_s = document["build_s"] = round(built_s, 1)
        tmp = self.dir / f".{KEY_JSON}.tmp"
        try:
            tmp.write_text(json.dumps(document, indent=1) + "\n")
            # key.json readable by the deploy's login user (prune reads it); the engines stay private
            os.chmod(tmp, 0o644)
            os.chmod(self.dir, 0o711)
            os.replace(tmp, self.dir / KEY_JSON)
        except OSError as error:
            log.warning("engine_cache_key_json_failed dir=%s error=%s", self.dir, error)

    def describe(self) -> dict:
        return {"dir": str(self.dir), "key": self.key, "facts": asdict(self.facts), "source": self.source,
                "context_model": self.has_context_model(), "build_s": self.build_s, "writable": self.writable,
                "notes": list(self.notes)}


def prepare(bundle_dir, cache_root: str | None, user_options: dict, inputs: list[str], max_batch: int,
            max_seq_len: int, facts: EngineFacts) -> EngineCache:
    """Key the bundle's model, make its directory (key.json first, so prune knows what it serves),
    and work out the TensorRT options of both ways to start. A cache that cannot be written is
    used without files (a warning), never a failure."""
    profiles = profile_shapes(inputs, max_batch, max_seq_len)
    shaping = trt_options(user_options, profiles, facts.ort, None, None, False)
    model = model_files(bundle_dir)
    key = engine_key(model, facts, shaping)
    root = Path(cache_root) if cache_root else None
    writable = root is not None
    if root is not None:
        try:
            (root / key / ENGINES).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.warning("engine_cache_unwritable dir=%s error=%s (the engine is built at every start)",
                        root / key, error)
            writable = False
    base = root or Path(".")
    timing = base / ("timing-" + engine_key({}, EngineFacts(tensorrt=facts.tensorrt, gpu=facts.gpu), {})[:12])
    if writable:
        try:
            timing.mkdir(exist_ok=True)
        except OSError:
            timing = base / key
    cache_dir = base / key if writable else None
    cache = EngineCache(base, key, model, facts,
                        trt_options(user_options, profiles, facts.ort, cache_dir, timing if writable else None,
                                    dump_context=True),
                        trt_options(user_options, profiles, facts.ort, cache_dir, timing if writable else None,
                                    dump_context=False),
                        writable=writable)
    if not writable:
        cache.notes.append("no writable engine_cache_dir: the engine is built at every start")
    cache.record()
    return cache
