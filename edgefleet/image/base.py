"""Base images from debootstrap recipes: a rootfs tarball, then an image, both cached by hash.

A recipe is a directory under docker/ with packages.txt and configure.sh; the shared script
docker/rootfs/debootstrap.sh turns it into a trimmed rootfs. The tarball is cached under
<build>/rootfs/ (with the downloaded .debs, so a rebuild needs no network), the image as the
tag `<recipe.image>:<arch>-<hash>` (label `edgefleet.recipe`). A recipe change makes new
names; old images and tarballs stay until removed by hand (`docker image prune`, rm).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet import engine, engine_rootfs
from edgefleet.paths import repo_root

__all__ = ["Recipe", "RECIPE_LABEL", "recipe_hash", "base_hash", "base_tag", "rootfs_tarball",
           "ensure_base", "rootfs_cache"]

RECIPE_LABEL = "edgefleet.recipe"


def _script() -> Path:
    return repo_root() / "docker" / "rootfs" / "debootstrap.sh"


@dataclass(frozen=True)
class Recipe:
    """A debootstrap recipe: docker/<name>/{packages.txt,configure.sh}, imaged as `image`."""

    name: str
    image: str
    files: tuple[str, ...] = ("packages.txt", "configure.sh")
    directory: Path | None = None

    @property
    def path(self) -> Path:
        return self.directory or repo_root() / "docker" / self.name


def recipe_hash(arch: str, files: tuple[str, ...], directory: Path) -> str:
    """Return a short sha256 over the arch and the named files (directories recursively)."""
    digest = hashlib.sha256(arch.encode())
    for name in files:
        top = directory / name
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file():
                relative = path.relative_to(directory).as_posix().encode()
                digest.update(relative + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def base_hash(recipe: Recipe, arch: str) -> str:
    """Return the hash naming a recipe's rootfs: its files, the arch and the shared script."""
    digest = hashlib.sha256(recipe_hash(arch, recipe.files, recipe.path).encode())
    digest.update(_script().read_bytes())
    return digest.hexdigest()[:16]


def base_tag(recipe: Recipe, arch: str) -> str:
    """Return the base image tag for a recipe and arch."""
    return f"{recipe.image}:{arch}-{base_hash(recipe, arch)}"


def rootfs_cache(build_dir: Path) -> Path:
    """Return where rootfs tarballs and downloaded .debs are kept."""
    return build_dir / "rootfs"


def rootfs_tarball(recipe: Recipe, arch: str, cache: Path) -> Path:
    """Return the cached rootfs tarball, running the debootstrap recipe when it is missing."""
    tarball = cache / f"rootfs-bookworm-{recipe.name}-{arch}-{base_hash(recipe, arch)}.tar.zst"
    if tarball.exists():
        print(f"{recipe.name}: rootfs cached ({tarball.name})", flush=True)
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    argv = ["bash", str(_script()), str(recipe.path), arch, str(tarball), str(cache / f"debs-{arch}")]
    if subprocess.run(argv).returncode != 0:
        raise RuntimeError(f"rootfs recipe {recipe.path} failed for {arch} (see output above)")
    print(f"{recipe.name}: rootfs {arch} built in {time.monotonic() - started:.0f} s", flush=True)
    return tarball


def ensure_base(recipe: Recipe, arch: str, build_dir: Path) -> str:
    """Return the tag of the recipe's base image for `arch`, building what the caches lack."""
    tag = base_tag(recipe, arch)
    if engine.image_labels(tag) is not None:
        return tag
    tarball = rootfs_tarball(recipe, arch, rootfs_cache(build_dir))
    labels = {RECIPE_LABEL: base_hash(recipe, arch), "edgefleet.arch": arch}
    engine_rootfs.import_image(tarball, tag, f"linux/{arch}",
                                [f"LABEL {key}={value}" for key, value in labels.items()])
    if engine.image_platform(tag) != f"linux/{arch}":
        # dockerd 20.10 records the host arch for `import --platform`: load it instead
        engine.remove_image(tag)
        engine_rootfs.load_rootfs(tarball, tag, arch, labels)
    return tag
