"""Describe a release: every file by sha256, a manifest, and a content-derived release id.

A venv release (`ship: venv`) carries the payload's sources and the packages' tarball (`env`);
an image release (`ship: image`) carries the runtime image's tarball instead (`image`), which
the device loads into its docker engine; both carry the bundle, runtime.yaml and the units.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import py_compile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..device_env import DeviceEnv, _host_can_compile
from ..digest import sha256_bytes, sha256_file
from ..errors import EdgefleetError
from ..model.bundle import BUNDLE_JSON, FILE_NAME, REQUIRED_FILES
from ..render import TUNING_SCRIPT, TUNING_UNIT, UNIT_NAME, RenderedFile

if TYPE_CHECKING:
    from ..image.ship import ShippedImage

__all__ = ["ReleaseFile", "Release", "make_release", "ReleaseError", "read_json"]

MANIFEST_FORMAT = 1


class ReleaseError(EdgefleetError):
    """The inputs of a release are incomplete or inconsistent."""


@dataclass(frozen=True)
class ReleaseFile:
    """A file of a release: its path inside the release dir, its hash, and where its bytes are."""

    path: str
    sha256: str
    size: int
    source: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.source is None:
            raise ReleaseError(f"{self.path}: neither bytes nor a source file")
        return self.source.read_bytes()


@dataclass(frozen=True)
class Release:
    release_id: str
    target: str
    files: tuple[ReleaseFile, ...]
    env: DeviceEnv | None  # None: an image release
    unit: ReleaseFile
    manifest: ReleaseFile
    tuning: tuple[ReleaseFile, ...] = ()  # the tuning unit and script, when rendered
    image: ShippedImage | None = None  # the runtime image (ship: image)
    # the payload byte-compiled here for the device's Python (when this host runs its X.Y): linked
    # into the release so the device compiles nothing. A cache, not content: the release id is
    # the same from a host that cannot compile them (the device then compiles its own)
    compiled: tuple[ReleaseFile, ...] = ()

    @property
    def bundle_id(self) -> str:
        """Return the bundle's identity: the sha256 of its bundle.json (which holds every file's), short."""
        return next((f.sha256[:12] for f in self.files if f.path == f"bundle/{BUNDLE_JSON}"), "?")

    @property
    def packages(self) -> DeviceEnv:
        """Return a venv release's package env (an image release has none)."""
        if self.env is None:
            raise ReleaseError(f"{self.release_id} is an image release: it has no package env")
        return self.env

    @property
    def runtime_image(self) -> ShippedImage:
        """Return an image release's runtime image (a venv release has none)."""
        if self.image is None:
            raise ReleaseError(f"{self.release_id} is a venv release: it has no runtime image")
        return self.image

    @property
    def image_object(self) -> ReleaseFile | None:
        """Return the image's tarball as an object (loaded, then deleted, on the device)."""
        if self.image is None:
            return None
        return ReleaseFile("image.tar.zst", self.image.sha256, self.image.size, source=self.image.tarball)

    def env_tarball(self, zstd: bool) -> ReleaseFile:
        """Return the packages' tarball to ship: zstd-compressed when the device has `zstd` and we have it."""
        env = self.packages
        if zstd and env.zst is not None and env.zst_sha256 is not None:
            return ReleaseFile("site.tar.zst", env.zst_sha256, env.zst.stat().st_size, source=env.zst)
        return ReleaseFile("site.tar.gz", env.sha256, env.tarball.stat().st_size, source=env.tarball)

    def objects(self) -> dict[str, ReleaseFile]:
        """Return every object the device must hold, by sha256 (the packages' tarball and an image's:
        only until they are unpacked or loaded)."""
        objects = {f.sha256: f for f in (*self.files, *self.compiled, self.unit, *self.tuning, self.manifest)}
        if self.env is not None:
            objects[self.env.sha256] = self.env_tarball(zstd=False)
        image = self.image_object
        if image is not None:
            objects[image.sha256] = image
        return objects


def _from_path(rel: str, path: Path) -> ReleaseFile:
    return ReleaseFile(rel, sha256_file(path), path.stat().st_size, source=path)


def _from_bytes(rel: str, data: bytes) -> ReleaseFile:
    return ReleaseFile(rel, sha256_bytes(data), len(data), data=data)


def _tree(prefix: str, root: Path) -> list[ReleaseFile]:
    """Return the source files under `root` (no bytecode) as release files under `prefix`.

    A rollout asks once per target for the same payload: the walk's names, sizes and mtimes
    decide whether the last answer still holds (benchmarks/RESULTS.md).
    """
    found = []
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if not name.endswith(".pyc"):
                path = os.path.join(top, name)
                st = os.stat(path)
                found.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
    return list(_tree_files(prefix, str(root), tuple(sorted(found))))


@functools.lru_cache(maxsize=32)
def _tree_files(prefix: str, root: str, found: tuple) -> tuple[ReleaseFile, ...]:
    return tuple(_from_path(f"{prefix}/{Path(path).relative_to(root).as_posix()}", Path(path))
                 for path, *_ in found if os.path.isfile(path))


def read_json(path: Path):
    """Parse a JSON file once per content (by stat) in a process: bundle.json, asked twice per
    target and once per device's gate. The answer is shared: read it,
    never change it."""
    st = os.stat(path)
    return _parsed(str(path), st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=32)
def _parsed(path: str, _mtime_ns: int, _size: int, _ino: int):
    return json.loads(Path(path).read_text())


def _compiled(files: list[ReleaseFile], python: str, cache_dir: Path | None = None) -> tuple[ReleaseFile, ...]:
    """Return the .pyc files of the payload's sources for the device's Python `python` (X.Y), or
    none when this interpreter is another X.Y (its bytecode would not load there).

    `cache_dir`: kept there by source sha256 and this interpreter's magic number (compiling the
    payload on every rollout costs CPU a no-op rollout should not spend).
    """
    if not _host_can_compile(python):
        return ()
    return tuple(_from_bytes(importlib.util.cache_from_source(f.path), _pyc(f.source, f.sha256, cache_dir))
                 for f in files if f.path.startswith("payload/") and f.path.endswith(".py") and f.source)


@functools.lru_cache(maxsize=256)
def _pyc(source: Path, sha256: str, cache_dir: Path | None = None) -> bytes:
    """Byte-compile `source` (as of its sha256): unchecked-hash, so the device never looks at
    mtimes; the file name in it is fixed up by the import system when the module loads."""
    cached = cache_dir / importlib.util.MAGIC_NUMBER.hex() / f"{sha256}.pyc" if cache_dir else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgefleet-pyc-") as tmp:
        out = Path(tmp) / "out.pyc"
        py_compile.compile(str(source), cfile=str(out), dfile=source.name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        data = out.read_bytes()
    if cached is not None and sha256_bytes(source.read_bytes()) == sha256:  # unchanged while compiled
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_name(f".{cached.name}.{os.getpid()}")
        part.write_bytes(data)
        part.replace(cached)
    return data


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Return every file bundle.json lists (the graph, its weights file, the tokenizer) and bundle.json."""
    meta = bundle_dir / BUNDLE_JSON
    try:
        listed = (read_json(meta).get("files") if meta.is_file() else None) or REQUIRED_FILES
    except (OSError, ValueError, AttributeError) as error:
        raise ReleaseError(f"{meta}: not a bundle ({error}; run: invoke model.quantize)") from None
    odd = [n for n in listed if not isinstance(n, str) or not FILE_NAME.fullmatch(n) or n == BUNDLE_JSON]
    if odd:
        raise ReleaseError(f"{meta}: key 'files' lists {', '.join(map(repr, odd))}: not plain file names")
    names = [*sorted({*listed, *REQUIRED_FILES}), BUNDLE_JSON]
    missing = [n for n in names if not (bundle_dir / n).is_file()]
    if missing:
        raise ReleaseError(f"{bundle_dir}: not a bundle, missing {', '.join(missing)} (run: invoke model.quantize)")
    return names


def make_release(
    target: str,
    bundle_dir: Path,
    payload_dir: Path,
    rendered: list[RenderedFile],
    env: DeviceEnv | None,
    image: ShippedImage | None = None,
    cache_dir: Path | None = None,
) -> Release:
    """Collect the release for `target`; its id depends only on the content.

    Exactly one of `env` (venv: the payload and its packages) and `image` (the runtime image).
    `cache_dir`: where the payload's .pyc files are kept between runs.
    """
    if (env is None) == (image is None):
        raise ReleaseError(f"release for {target}: give the packages (venv) or the runtime image, not "
                           f"{'both' if env else 'neither'}")
    bundle_files = _bundle_files(bundle_dir)
    files = [_from_path(f"bundle/{n}", bundle_dir / n) for n in bundle_files]
    if env is not None:  # an image holds its own runtime
        files += _tree("payload/edge_runtime", payload_dir / "edge_runtime")
    by_name = {f.name: f for f in rendered}
    if UNIT_NAME not in by_name or "runtime.yaml" not in by_name:
        raise ReleaseError(f"rendered files for {target} must include runtime.yaml and {UNIT_NAME}")
    files.append(_from_bytes("runtime.yaml", by_name["runtime.yaml"].text.encode()))
    unit = _from_bytes(UNIT_NAME, by_name[UNIT_NAME].text.encode())
    tuning = tuple(_from_bytes(n, by_name[n].text.encode()) for n in (TUNING_UNIT, TUNING_SCRIPT) if n in by_name)
    content = {
        "files": {f.path: f.sha256 for f in files},
        "unit": {"name": UNIT_NAME, "sha256": unit.sha256},
    }
    if env is not None:
        content["env"] = {"sha256": env.sha256, "arch": env.arch, "python": env.python}
    elif image is not None:
        content["image"] = {"id": image.image_id, "sha256": image.sha256, "arch": image.arch}
    if tuning:
        content["tuning"] = {f.path: f.sha256 for f in tuning}
    release_id = "r-" + sha256_bytes(json.dumps(content, sort_keys=True).encode())[:12]
    bundle_meta = read_json(bundle_dir / BUNDLE_JSON)
    manifest = {
        "format": MANIFEST_FORMAT,
        "release_id": release_id,
        "target": target,
        "bundle": bundle_meta.get("name", bundle_dir.name),
        **content,
    }
    compiled = _compiled(files, env.python, cache_dir) if env is not None else ()
    if compiled:  # listed for prune (it keeps what a kept release uses), outside the id's content
        manifest["compiled"] = {f.path: f.sha256 for f in compiled}
    manifest_file = _from_bytes("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return Release(release_id, target, tuple(files), env, unit, manifest_file, tuning, image, compiled)
