"""Render the files written on a device from Jinja2 templates, in memory, and check them."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from .errors import InputError
from .inventory import Target
from .paths import repo_root
from .settings import LOOPBACK

__all__ = ["RenderedFile", "render_target", "write_rendered", "check_rendered", "check_rendered_many",
           "security_exposure", "RenderError", "CONTAINER_NAME", "UNIT_NAME", "TUNING_UNIT", "TUNING_SCRIPT",
           "MAX_EXPOSURE", "RUNTIME_UNIT_EXPOSURE", "GPU_UNIT_EXPOSURE", "GPU_GROUPS", "TOKEN_ENV", "TOKEN_FILE",
           "token_digest", "engine_cache_dir", "uses_gpu", "gpu_groups_argv"]

UNIT_NAME = "edgefleet-runtime.service"
TUNING_UNIT = "edgefleet-tuning.service"
TUNING_SCRIPT = "edgefleet-tuning.sh"
TUNING_SCRIPT_PATH = f"/usr/local/lib/edgefleet/{TUNING_SCRIPT}"
DEVICE_PYTHON = "/usr/bin/python3"
CONTAINER_NAME = "edgefleet-runtime"  # the runtime's container in image mode (`ship: image`)
UNIT_IMAGE_TEMPLATE = "edgefleet-runtime-image.service.j2"
MAX_EXPOSURE = 2.0
# what the venv runtime unit reaches on every board profile (the tests hold it there; the image
# unit, which runs docker, stays under MAX_EXPOSURE only)
RUNTIME_UNIT_EXPOSURE = 1.2
# A unit that opens the GPU (CUDA/TensorRT providers) sees the device nodes and may map
# writable-executable memory: it scores higher, and is held to this instead.
GPU_UNIT_EXPOSURE = 1.5
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The groups that own a Jetson's GPU nodes (/dev/nvmap, /dev/nvhost-*, /dev/nvgpu/*: video;
# /dev/dri/renderD*: render). Not SupplementaryGroups= in the unit: systemd fails the start
# (216/GROUP) on a system without one of them; the deploy adds the user to those that exist.
GPU_GROUPS = ("video", "render")
TOKEN_ENV = "EDGEFLEET_RUNTIME_TOKEN"  # the variable runtime.yaml's token_env names
TOKEN_FILE = "secrets/runtime.env"  # under the device root: the token for systemd, root only, 0600
ENGINE_CACHE = "cache/trt"  # under the device root: TensorRT engines, outside releases (pruned with them)


def uses_gpu(settings) -> bool:
    """Return whether the target's runtime asks for a GPU provider (its unit then opens the GPU)."""
    return settings.ship == "venv" and any(p in GPU_PROVIDERS for p in settings.providers)


def gpu_groups_argv(user: str) -> list[str]:
    """Return a root command adding `user` to each of GPU_GROUPS the device has (no shell quoting:
    the names are arguments)."""
    return ["sh", "-c", 'u=$1; shift; for g; do getent group "$g" >/dev/null && usermod -a -G "$g" "$u"; '
            'done; exit 0', "sh", user, *GPU_GROUPS]


def engine_cache_dir(settings) -> str | None:
    """Return the device's TensorRT engine cache directory, when the target asks for TensorRT and
    runs the venv runtime (an image's container has no GPU and no writable cache), else None."""
    if "TensorrtExecutionProvider" not in settings.providers or settings.ship != "venv":
        return None
    return f"{settings.root}/{ENGINE_CACHE}"


class RenderError(InputError):
    """A template failed to render or a rendered file failed its check."""


@dataclass(frozen=True)
class RenderedFile:
    """One rendered file: its name, where it goes on the device, and its text."""

    name: str
    device_path: str
    text: str


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: Path) -> jinja2.Environment:
    """Return the Jinja2 environment for `templates_dir`: one per process, so templates compile once.

    (The loader re-reads a template whose file changed.)
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def token_digest(target_name: str, token: str) -> str:
    """Return a salted scrypt digest of `token` (written in runtime.yaml: a new token, a new release;
    slow to guess from, unlike a plain hash)."""
    import hashlib

    salt = f"edgefleet-runtime-token:{target_name}".encode()
    return "scrypt-n16384-r8-p1:" + hashlib.scrypt(token.encode(), salt=salt, n=2**14, r=8, p=1, dklen=16).hex()


def render_target(target: Target, templates_dir: Path | None = None) -> list[RenderedFile]:
    """Render the runtime config, the runtime unit, and the tuning unit and script for `target`."""
    env = _environment(templates_dir or repo_root() / "templates")
    settings = target.settings
    context = {
        "target": target,
        "settings": settings,
        "runtime": settings.runtime,
        "root": settings.root,
        "python": DEVICE_PYTHON,
        "loopback": LOOPBACK,
        "runtime_unit": UNIT_NAME,
        "tuning_unit": TUNING_UNIT,
        "tuning_script_path": TUNING_SCRIPT_PATH,
        "container": CONTAINER_NAME,
        "token_env": TOKEN_ENV,
        "token_file": TOKEN_FILE,
        "token_digest": token_digest(target.name, settings.runtime.token) if settings.runtime.token else "",
        "engine_cache": engine_cache_dir(settings) or "",
        "gpu": uses_gpu(settings),
    }
    # ship: image runs the same runtime from its image under docker (templates/*-image.service.j2)
    unit_template = UNIT_IMAGE_TEMPLATE if settings.ship == "image" else f"{UNIT_NAME}.j2"
    plan = [
        ("runtime.yaml", "runtime.yaml.j2", f"{settings.root}/current/runtime.yaml"),
        (UNIT_NAME, unit_template, f"/etc/systemd/system/{UNIT_NAME}"),
        (TUNING_UNIT, f"{TUNING_UNIT}.j2", f"/etc/systemd/system/{TUNING_UNIT}"),
        (TUNING_SCRIPT, f"{TUNING_SCRIPT}.j2", TUNING_SCRIPT_PATH),
    ]
    rendered = []
    for name, template, device_path in plan:
        try:
            text = env.get_template(template).render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"templates/{template}: {exc}") from None
        rendered.append(RenderedFile(name, device_path, text))
    return rendered


def check_rendered(files: list[RenderedFile], cache_dir: Path | None = None) -> list[str]:
    """Check rendered files (YAML parses, units verify, scripts pass sh -n/shellcheck); return notes.

    `cache_dir`: remember each text that passed without a note (by the sha256 of the text and
    the checkers' identity), so a re-run of a rollout does not run 4 subprocesses per device.
    """
    notes = []
    for f in files:
        mark = cache_dir / _check_key(f) if cache_dir is not None else None
        if mark is not None and mark.exists():
            continue
        found = [n for n in _check_one(f) if n]
        notes.extend(found)
        if mark is not None and not found:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()
    return notes


def check_rendered_many(file_sets: list[list[RenderedFile]], cache_dir: Path) -> list[str]:
    """Check many targets' rendered files at once (a rollout's), remembering each as `check_rendered` does.

    Each distinct text is checked once; the units are verified a few at a time (one process
    each, on every core) and every script goes through one `shellcheck` run: a fleet's worth of
    targets checks several times faster than one by one. A file that fails raises RenderError as
    it would alone.
    """
    pending: dict[str, RenderedFile] = {}
    for files in file_sets:
        for f in files:
            key = _check_key(f)
            if key not in pending and not (cache_dir / key).exists():
                pending[key] = f
    if not pending:
        return []
    scripts = {k: f for k, f in pending.items() if f.name.endswith(".sh")}
    units = {k: f for k, f in pending.items() if f.name.endswith(".service")}
    notes: list[str] = []
    found: dict[str, list[str]] = {}
    for key, f in pending.items():
        if key not in scripts and key not in units:
            found[key] = _check_one(f)
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        found.update(zip(scripts, pool.map(_syntax_only, scripts.values()), strict=True))
    found.update(_verify_units(units))
    script_notes = _shellcheck_many(scripts)
    for key in pending:
        problems = [n for n in found.get(key, []) if n] + script_notes.get(key, [])
        notes.extend(problems)
        if not problems:
            (cache_dir / key).parent.mkdir(parents=True, exist_ok=True)
            (cache_dir / key).touch()
    return notes


def _verify_units(units: dict[str, RenderedFile]) -> dict[str, list[str]]:
    """Verify many units in one `systemd-analyze verify` (its start-up, not the units, is the cost):
    each as a file of its own name (`u<i>-<name>`), its problems told apart by that name."""
    analyze = shutil.which("systemd-analyze")
    if not units:
        return {}
    if analyze is None:
        return {k: [f"{f.name}: systemd-analyze not installed, unit not verified"] for k, f in units.items()}
    with tempfile.TemporaryDirectory() as tmp:
        names = {}
        for i, (key, f) in enumerate(units.items()):
            names[key] = f"u{i}-{f.name}"
            (Path(tmp) / names[key]).write_text(f.text)
        proc = subprocess.run([analyze, "verify", "--man=no", *(str(Path(tmp) / n) for n in names.values())],
                              capture_output=True, text=True, timeout=300)
    lines = (proc.stderr + proc.stdout).splitlines()
    for key, name in names.items():
        problems = [ln.replace(name, units[key].name) for ln in lines if _unit_problem(ln, name)]
        if problems:
            raise RenderError(f"{units[key].name}: systemd-analyze verify failed:\n" + "\n".join(problems))
    return {}


def _unit_problem(line: str, name: str) -> bool:
    # verify also complains about the host's own units and about paths that exist only on
    # the device (the release dir, the tuning script); keep what is about our unit's syntax
    return name in line and "Command" not in line and "not executable" not in line and "is not a unit" not in line


def _syntax_only(script: RenderedFile) -> list[str]:
    proc = _run_on_file(script, ["sh", "-n"])
    if proc.returncode != 0:
        raise RenderError(f"{script.name}: sh -n failed:\n{proc.stderr.strip()}")
    return []


def _code_of(script: str) -> str:
    """Return a script without its plain comment lines (shellcheck directives kept): what shellcheck
    judges. Targets' scripts differ in their header comment only, so one check covers many."""
    return "\n".join(ln for ln in script.splitlines()
                     if not (ln.lstrip().startswith("#") and "shellcheck" not in ln and not ln.startswith("#!")))


def _shellcheck_many(scripts: dict[str, RenderedFile]) -> dict[str, list[str]]:
    """Run one shellcheck over every distinct script (by key); raise RenderError naming the first that fails.

    Scripts that differ only in comments are checked once (each shellcheck run costs a start-up:
    a fleet's tuning scripts come down to one per board).
    """
    shellcheck = shutil.which("shellcheck")
    if not scripts:
        return {}
    if shellcheck is None:
        return {k: [f"{f.name}: shellcheck not installed, only sh -n checked"] for k, f in scripts.items()}
    distinct: dict[tuple[str, str], str] = {}
    for key, f in scripts.items():
        distinct.setdefault((f.name, _code_of(f.text)), key)
    scripts = {key: scripts[key] for key in distinct.values()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (key, f) in enumerate(scripts.items()):
            path = Path(tmp) / f"{i}" / f.name
            path.parent.mkdir()
            path.write_text(f.text)
            paths[key] = path
        proc = subprocess.run([shellcheck, "--shell=sh", "--severity=style", *map(str, paths.values())],
                              capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        bad = next((scripts[k] for k, p in paths.items() if f"{p.parent.name}/{p.name}" in proc.stdout),
                   next(iter(scripts.values())))
        raise RenderError(f"{bad.name}: shellcheck failed:\n{proc.stdout.strip()[-2000:]}")
    return {}


@functools.lru_cache(maxsize=1)
def _checkers() -> str:
    """Return which checkers this host has (path, size, mtime): a new version checks everything again."""
    found = []
    for tool in ("systemd-analyze", "shellcheck", "sh"):
        path = shutil.which(tool)
        st = os.stat(path) if path else None
        found.append(f"{tool}={path}:{st.st_size}:{st.st_mtime_ns}" if st else f"{tool}=none")
    return " ".join(found)


def _check_key(f: RenderedFile) -> str:
    text = "\0".join((_checkers(), f.name, f.device_path, f.text))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_one(f: RenderedFile) -> list[str]:
    if f.name.endswith(".yaml"):
        try:
            yaml.safe_load(f.text)
        except yaml.YAMLError as exc:
            raise RenderError(f"{f.name}: rendered YAML does not parse: {exc}") from None
    elif f.name.endswith(".service"):
        return [_verify_unit(f)]
    elif f.name.endswith(".sh"):
        return _check_script(f)
    return []


def _run_on_file(f: RenderedFile, argv: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f.name
        path.write_text(f.text)
        return subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60)


def _check_script(script: RenderedFile) -> list[str]:
    proc = _run_on_file(script, ["sh", "-n"])
    if proc.returncode != 0:
        raise RenderError(f"{script.name}: sh -n failed:\n{proc.stderr.strip()}")
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        return [f"{script.name}: shellcheck not installed, only sh -n checked"]
    proc = _run_on_file(script, [shellcheck, "--shell=sh", "--severity=style"])
    if proc.returncode != 0:
        raise RenderError(f"{script.name}: shellcheck failed:\n{proc.stdout.strip()}")
    return []


def _verify_unit(unit: RenderedFile) -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return f"{unit.name}: systemd-analyze not installed, unit not verified"
    proc = _run_on_file(unit, [analyze, "verify", "--man=no"])
    # verify also complains about the host's own units and about paths that exist only on
    # the device (the release dir, the tuning script); keep what is about our unit's syntax.
    problems = [line for line in (proc.stderr + proc.stdout).splitlines() if _unit_problem(line, unit.name)]
    if problems:
        raise RenderError(f"{unit.name}: systemd-analyze verify failed:\n" + "\n".join(problems))
    return ""


def security_exposure(unit: RenderedFile) -> float | None:
    """Return `systemd-analyze security --offline` exposure of a unit (None without systemd-analyze)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return None
    proc = _run_on_file(unit, [analyze, "security", "--offline=yes", "--no-pager"])
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    if match is None:
        raise RenderError(f"{unit.name}: systemd-analyze security gave no score:\n{(proc.stdout + proc.stderr)[-600:]}")
    return float(match.group(1))


def write_rendered(files: list[RenderedFile], out_dir: Path) -> list[Path]:
    """Write rendered files into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        path = out_dir / f.name
        path.write_text(f.text)
        paths.append(path)
    return paths
