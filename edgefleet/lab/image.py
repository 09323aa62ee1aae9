"""Build the lab device image: debootstrap rootfs -> `docker import` -> small buildx layer.

Both steps are cached by the hash of their recipe files: the rootfs tarball under
build/lab/cache/, the images as tags `edgefleet/lab-base:<arch>-<hash>` and
`edgefleet/lab-device:<arch>-<hash>` (label `edgefleet.recipe`). A recipe change makes new
tags; old images and tarballs stay until removed by hand (`docker image prune`, rm).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from edgefleet import engine
from edgefleet.paths import repo_root

__all__ = ["recipe_dir", "recipe_hash", "image_tag", "ensure_image"]

BASE_FILES = ("rootfs.sh", "packages.txt")
LAYER_FILES = ("Dockerfile", "overlay")
RECIPE_LABEL = "edgefleet.recipe"


def recipe_dir() -> Path:
    """Return docker/lab-device in the repo."""
    return repo_root() / "docker" / "lab-device"


def recipe_hash(arch: str, files: tuple[str, ...], directory: Path | None = None) -> str:
    """Return a short sha256 over the arch and the named recipe files."""
    directory = directory or recipe_dir()
    digest = hashlib.sha256(arch.encode())
    for name in files:
        top = directory / name
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file():
                relative = path.relative_to(directory).as_posix().encode()
                digest.update(relative + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_tag(arch: str) -> str:
    """Return the device image tag for the current recipe."""
    return f"edgefleet/lab-device:{arch}-{recipe_hash(arch, BASE_FILES + LAYER_FILES)}"


def _rootfs_tarball(arch: str, cache: Path) -> Path:
    """Return the cached rootfs tarball, running the debootstrap recipe when it is missing."""
    tarball = cache / f"rootfs-bookworm-{arch}-{recipe_hash(arch, BASE_FILES)}.tar.zst"
    if tarball.exists():
        print(f"lab image: rootfs cached ({tarball.name})", flush=True)
        return tarball
    started = time.monotonic()
    script = recipe_dir() / "rootfs.sh"
    argv = ["bash", str(script), arch, str(tarball), str(cache / f"debs-{arch}")]
    if subprocess.run(argv).returncode != 0:
        raise RuntimeError(f"rootfs recipe failed for {arch} (see output above)")
    print(f"lab image: rootfs {arch} built in {time.monotonic() - started:.0f} s", flush=True)
    return tarball


def ensure_image(arch: str, build_dir: Path) -> str:
    """Return the tag of the device image for `arch`, building what the cache lacks."""
    tag = image_tag(arch)
    if engine.image_labels(tag) is not None:
        print(f"lab image: {tag} exists", flush=True)
        return tag
    started = time.monotonic()
    cache = build_dir / "lab" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    base_hash = recipe_hash(arch, BASE_FILES)
    base_tag = f"edgefleet/lab-base:{arch}-{base_hash}"
    if engine.image_labels(base_tag) is None:
        tarball = _rootfs_tarball(arch, cache)
        labels = {RECIPE_LABEL: base_hash, "edgefleet.lab.arch": arch}
        engine.import_image(tarball, base_tag, f"linux/{arch}",
                            [f"LABEL {key}={value}" for key, value in labels.items()])
        if engine.image_platform(base_tag) != f"linux/{arch}":
            # dockerd 20.10 records the host arch for `import --platform`: load it instead
            engine.remove_image(base_tag)
            engine.load_rootfs(tarball, base_tag, arch, labels)
    engine.build_image(
        recipe_dir(), tag, f"linux/{arch}", {"BASE": base_tag},
        {RECIPE_LABEL: tag.rsplit("-", 1)[1], "edgefleet.lab.arch": arch},
    )
    print(f"lab image: {tag} ready in {time.monotonic() - started:.0f} s", flush=True)
    return tag
