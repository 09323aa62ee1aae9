"""Resolve the device runtime's Python packages on the host, for the device's arch and Python."""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .digest import sha256_file
from .errors import EdgefleetError

__all__ = ["PYC_MARK", "DeviceEnv", "EnvError", "build_device_env", "build_target_env", "pin_requirements",
           "pip_platforms", "read_prune", "pruned", "runtime_prune"]

# Newest first; pip accepts a wheel tagged with any of them.
_PLATFORMS = {
    "arm64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
    "amd64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
}


class EnvError(EdgefleetError):
    """The device's packages could not be resolved."""


@dataclass(frozen=True)
class DeviceEnv:
    """A deterministic tarball of site-packages for one (arch, python, requirements).

    `sha256` (of the gzip tarball) names the env on the device (`envs/<sha256>/`). `zst` holds
    the same tar compressed with zstd, shipped instead to devices that have `zstd`: fewer bytes
    and a fraction of gzip's CPU time to unpack.
    """

    arch: str
    python: str
    tarball: Path
    sha256: str
    zst: Path | None = None
    zst_sha256: str | None = None


def pip_platforms(arch: str) -> list[str]:
    """Return the pip `--platform` tags for a device architecture."""
    try:
        return _PLATFORMS[arch]
    except KeyError:
        raise EnvError(f"no wheel platform known for arch {arch!r}") from None


def read_prune(path: Path) -> list[str]:
    """Return the glob patterns of a prune list (one a line, `#` comments)."""
    patterns = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            patterns.append(line)
    return patterns


def pruned(name: str, patterns: list[str]) -> bool:
    """Return True when a site-packages path (or any directory above it) matches a pattern."""
    parts = name.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def runtime_prune() -> list[str]:
    """Return the runtime's prune list (docker/runtime/prune.txt), shared by image and venv."""
    from .paths import repo_root

    return read_prune(repo_root() / "docker" / "runtime" / "prune.txt")


def _prune_tree(site: Path, patterns: list[str]) -> None:
    """Delete what `patterns` match under `site` (a matched directory goes whole)."""
    for path in sorted(site.rglob("*"), reverse=True):  # children before their directory
        if path.exists() and pruned(path.relative_to(site).as_posix(), patterns):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _key(requirements: str, arch: str, python: str, compile_pyc: bool = True,
         prune: list[str] | None = None) -> str:
    compiled = ["pyc"] if compile_pyc and _host_can_compile(python) else []
    pruning = ["prune", *prune] if prune else []
    text = "\n".join([requirements, arch, python, *pip_platforms(arch), *compiled, *pruning])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# In an env tarball whose .pyc files the host compiled (for the device's Python): the device
# then skips compileall, which under emulation or on a slow board is most of unpacking.
PYC_MARK = ".edgefleet-pyc"
_HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _host_can_compile(python: str) -> bool:
    """Return whether this interpreter writes .pyc files the device's Python accepts (same X.Y)."""
    return python == _HOST_PYTHON


def _compile(site: Path) -> None:
    """Byte-compile `site` for this Python: unchecked-hash .pyc files need no source mtimes (the
    tarball sets every mtime to 0) and the import system fixes their file names at load."""
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                           "unchecked-hash", str(site)], capture_output=True, text=True)
    if proc.returncode != 0:  # a file compileall rejects is compiled (or not) on the device as before
        return
    (site / PYC_MARK).write_text(f"{_HOST_PYTHON}\n")


def _deterministic_tar(src: Path, dest: Path) -> None:
    """Pack `src` into a gzip tarball whose bytes depend only on the file contents."""
    raw = io.BytesIO()
    keep_pyc = (src / PYC_MARK).is_file()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if "__pycache__" in rel.split("/") and not keep_pyc:
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            info.mode = 0o755 if (path.is_dir() or os.access(path, os.X_OK)) else 0o644
            if info.isreg():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(raw.getvalue(), compresslevel=6, mtime=0))  # no name, no time
    tmp.replace(dest)


def pin_requirements(text: str, pins: dict[str, str]) -> str:
    """Return requirements `text` with each pinned package set to `name==version` (added if absent)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()
    wanted = {norm(n): (n, v) for n, v in pins.items()}
    # onnxruntime-gpu is onnxruntime (the same `onnxruntime` module) with CUDA/TensorRT: never both
    replaced = {"onnxruntime"} if "onnxruntime-gpu" in wanted else set()
    for name in replaced:  # also the board's own onnxruntime pin, under a group's onnxruntime-gpu
        wanted.pop(name, None)
    out = []
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.lstrip().startswith("#") and norm(match.group(1)) in replaced:
            out.append(f"# {line.strip()}  # replaced by onnxruntime-gpu (board profile)")
        elif match and not line.lstrip().startswith("#") and norm(match.group(1)) in wanted:
            name, version = wanted.pop(norm(match.group(1)))
            out.append(f"{name}=={version}  # pinned by the board profile")
        else:
            out.append(line)
    out += [f"{n}=={v}  # pinned by the board profile" for n, v in wanted.values()]
    return "\n".join(out) + "\n"


def build_target_env(target, requirements: Path, cache_dir: Path) -> DeviceEnv:
    """Resolve `requirements` for a target: its arch, Python, package pins and wheel sources."""
    s = target.settings
    return build_device_env(requirements, s.arch, s.python, cache_dir, pins=s.packages.pins,
                            find_links=s.packages.find_links, index_url=s.packages.index_url,
                            prune=runtime_prune())


def build_device_env(requirements: Path, arch: str, python: str, cache_dir: Path, pins: dict[str, str] | None = None,
                     find_links: str | None = None, index_url: str | None = None,
                     compile_pyc: bool = True, prune: list[str] | None = None) -> DeviceEnv:
    """Install `requirements` (with `pins` applied) for the device with pip (wheels only, no deps) and pack them.

    `compile_pyc`: when this interpreter is the device's Python version, ship .pyc files too.
    `prune`: site-packages paths to leave out (the runtime image's list: what loading a bundle
    never imports; ~35% of the unpacked bytes, less to upload and unpack on every device).
    """
    req_text = pin_requirements(requirements.read_text(), pins) if pins else requirements.read_text()
    sources = [f"--find-links={find_links}"] * bool(find_links) + [f"--index-url={index_url}"] * bool(index_url)
    key = _key("\n".join([req_text, *sources]), arch, python, compile_pyc, prune)
    out_dir = cache_dir / f"{arch}-cp{python.replace('.', '')}-{key}"
    tarball = out_dir / "site.tar.gz"
    if tarball.is_file():
        return _with_zst(DeviceEnv(arch, python, tarball, sha256_file(tarball)))
    site = out_dir / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    if req_text != requirements.read_text():
        (out_dir / "requirements.txt").write_text(req_text)
        requirements = out_dir / "requirements.txt"
    abi = "cp" + python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--no-compile", "--only-binary=:all:", "--target", str(site),
           "--python-version", python, "--implementation", "cp", "--abi", abi]
    for platform in pip_platforms(arch):
        cmd += ["--platform", platform]
    cmd += [*sources, "-r", str(requirements)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING: Location")]
        raise EnvError(
            f"pip could not resolve {requirements} for {arch}/python {python} "
            f"(platforms {', '.join(pip_platforms(arch))}):\n" + "\n".join(errors[-15:])
        )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts point at the host's python
    if prune:
        _prune_tree(site, prune)
    if compile_pyc and _host_can_compile(python):
        _compile(site)
    _deterministic_tar(site, tarball)
    shutil.rmtree(site)
    return _with_zst(DeviceEnv(arch, python, tarball, sha256_file(tarball)))


ZSTD_LEVEL = 12  # near level 19's size at a small part of its CPU time; smaller than gzip -6


def _with_zst(env: DeviceEnv) -> DeviceEnv:
    """Add the zstd copy of `env`'s tar (made once, beside the gzip one), when this host has `zstd`."""
    zst = env.tarball.with_name("site.tar.zst")
    if not zst.is_file():
        if shutil.which("zstd") is None:
            return env
        tmp = zst.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as out:
            proc = subprocess.run(["zstd", "-q", f"-{ZSTD_LEVEL}", "-T1", "-c"],
                                  input=gzip.decompress(env.tarball.read_bytes()), stdout=out, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise EnvError(f"zstd could not compress {env.tarball}: {proc.stderr.decode(errors='replace')[-300:]}")
        tmp.replace(zst)
    return dataclasses.replace(env, zst=zst, zst_sha256=sha256_file(zst))
