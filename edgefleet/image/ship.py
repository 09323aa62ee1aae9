"""One platform's runtime image as a file a device loads: a zstd docker-archive, cached by image ID.

`image.save` writes one for a person to carry; a deploy with `ship: image` takes one per
(image, arch) from build/images/ship/ and uploads it as a content-addressed object. The
archive's config digest is the image ID the device's engine gives the loaded image (graph-driver
store), which the deploy checks after the load and records in the release.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet import engine
from edgefleet.digest import sha256_bytes, sha256_file
from edgefleet.image.archive import compress, platform_archive, read_member
from edgefleet.image.build import ImageError, arch_of, resolve_ref

__all__ = ["ShippedImage", "save_platform", "archive_image_id", "shipped_image", "SHIP_LEVEL"]

SHIP_LEVEL = 19  # zstd level of a shipped image (as image.save): done once per image and arch


@dataclass(frozen=True)
class ShippedImage:
    """A runtime image ready to ship: the tarball, its sha256 and size, the ID it loads as."""

    ref: str
    arch: str
    image_id: str  # sha256:<config digest>: what `docker image ls --no-trunc` shows once loaded
    tarball: Path
    sha256: str
    size: int
    unpacked_size: int  # the uncompressed archive: about what the engine stores


def archive_image_id(docker_archive: Path) -> str:
    """Return the image ID of a one-image docker-archive (the sha256 of its config)."""
    with tarfile.open(docker_archive) as tar:
        entries = json.loads(read_member(tar, "manifest.json", docker_archive))
        config = read_member(tar, entries[0]["Config"], docker_archive)
    return "sha256:" + sha256_bytes(config)


def save_platform(tag: str, platform: str, dest: Path, level: int = SHIP_LEVEL) -> tuple[str, int]:
    """Write `dest`: `platform`'s image of `tag` as a zstd docker-archive; return (image ID, unpacked bytes)."""
    ref = resolve_ref(tag, platform)
    raw, cut = dest.with_name(dest.name + ".save.tar"), dest.with_name(dest.name + ".image.tar")
    try:
        engine.save_image(ref, raw)
        platform_archive(raw, cut, platform, tag)
        found, unpacked = archive_image_id(cut), cut.stat().st_size
        compress(cut, dest, level)
    finally:
        raw.unlink(missing_ok=True)
        cut.unlink(missing_ok=True)
    return found, unpacked


def shipped_image(tag: str, arch: str, build_dir: Path, log=print, level: int = SHIP_LEVEL) -> ShippedImage:
    """Return `tag`'s image for `arch` as a tarball, saving it once per local image ID and arch.

    `level`: zstd level of a new tarball (a cached one is used whatever level made it).
    """
    platform = f"linux/{arch}"
    ref = resolve_ref(tag, platform)
    host_id = engine.image_id(ref)
    if host_id is None:  # removed since resolve_ref found it
        raise ImageError(f"runtime image {ref} is gone from the local engine")
    cache = build_dir / "images" / "ship"
    stem = f"{host_id.split(':', 1)[-1][:16]}-{arch}"
    tarball, record = cache / f"{stem}.tar.zst", cache / f"{stem}.json"
    if not (tarball.is_file() and record.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        log(f"runtime image {ref} ({arch_of(platform)}): saving it for devices (zstd -{level}, once per image)")
        found, unpacked = save_platform(tag, platform, tarball, level)
        record.write_text(json.dumps({"ref": ref, "image_id": found, "sha256": sha256_file(tarball),
                                      "unpacked_size": unpacked}) + "\n")
    meta = json.loads(record.read_text())
    return ShippedImage(meta["ref"], arch, meta["image_id"], tarball, meta["sha256"], tarball.stat().st_size,
                        meta["unpacked_size"])
