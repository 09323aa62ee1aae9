"""Build the lab device image: the lab-device debootstrap base plus a small buildx layer.

The base (rootfs tarball and image) is cached by edgefleet.image.base; the device image is
the tag `edgefleet/lab-device:<arch>-<hash>` over the base and docker/lab-device/{Dockerfile,
overlay}.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from edgefleet import engine
from edgefleet.image import base

__all__ = ["RECIPE", "LAYER_FILES", "recipe_dir", "recipe_hash", "image_tag", "ensure_image"]

RECIPE = base.Recipe("lab-device", "edgefleet/lab-base")
recipe_hash = base.recipe_hash  # the lab VM hashes its recipe the same way
LAYER_FILES = ("Dockerfile", "overlay")


def recipe_dir() -> Path:
    """Return docker/lab-device in the repo."""
    return RECIPE.path


def image_tag(arch: str) -> str:
    """Return the device image tag for the current recipe."""
    digest = hashlib.sha256(base.base_hash(RECIPE, arch).encode())
    digest.update(base.recipe_hash(arch, LAYER_FILES, recipe_dir()).encode())
    return f"edgefleet/lab-device:{arch}-{digest.hexdigest()[:16]}"


def ensure_image(arch: str, build_dir: Path) -> str:
    """Return the tag of the device image for `arch`, building what the cache lacks."""
    tag = image_tag(arch)
    if engine.image_labels(tag) is not None:
        print(f"lab image: {tag} exists", flush=True)
        return tag
    started = time.monotonic()
    base_tag = base.ensure_base(RECIPE, arch, build_dir)
    engine.build_image(
        recipe_dir(), tag, f"linux/{arch}", {"BASE": base_tag},
        {base.RECIPE_LABEL: tag.rsplit("-", 1)[1], "edgefleet.lab.arch": arch},
    )
    print(f"lab image: {tag} ready in {time.monotonic() - started:.0f} s", flush=True)
    return tag
