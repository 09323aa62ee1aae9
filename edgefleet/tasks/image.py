"""Runtime image tasks: `image.build`, `image.save`, `image.test`, `image.lock`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from invoke import Collection, Exit

from edgefleet import paths

from ._errors import UsageError, exits_on_user_error
from ._task import task

DEFAULTS = {
    "tag": "edgefleet/runtime:latest",
    "platforms": "linux/arm64,linux/amd64",
    "base": "python:3.11-slim",  # `local`: the offline debootstrap base (docker/runtime-base)
    "python": "3.11",
}


def _setting(c, key: str, value: str | None) -> str:
    if value:
        return value
    section = (c.config.get("edgefleet", {}) or {}).get("image", {}) or {}
    return str(section.get(key) or DEFAULTS[key])


def image_tag(c, tag: str | None = None) -> str:
    """Return the runtime image tag: `tag`, else config edgefleet.image.tag (what `ship: image` deploys)."""
    return _setting(c, "tag", tag)


def _platforms(c, platform: str | None) -> list[str]:
    from edgefleet.image.build import parse_platforms

    return parse_platforms(_setting(c, "platforms", platform))


@task(help={
    "platform": "linux/arm64, linux/amd64 or both comma-separated (default: both)",
    "tag": "image tag (default edgefleet/runtime:latest)",
    "base": "base image with Python 3.11, or `local` for the offline debootstrap base "
            "(default python:3.11-slim; config edgefleet.image.base)",
    "python": "the base's Python (X.Y): wheels are resolved for its ABI (default 3.11)",
})
@exits_on_user_error
def build(c, platform=None, tag=None, base=None, python=None):
    """Build the runtime image with buildx (multi-platform in one tag when the engine can)."""
    from edgefleet.image.build import build as run_build

    started = time.monotonic()
    run_build(paths.build_dir(c), _platforms(c, platform), _setting(c, "tag", tag),
              _setting(c, "base", base), _setting(c, "python", python))
    print(f"image.build: done in {time.monotonic() - started:.1f} s")


@task(help={
    "platform": "the one platform to save (default linux/arm64)",
    "tag": "image tag (default edgefleet/runtime:latest)",
    "out": "output file (default <build>/images/<name>-<tag>-<arch>.tar.zst)",
    "level": "zstd level (default 19)",
})
@exits_on_user_error
def save(c, platform="linux/arm64", tag=None, out=None, level=19):
    """Save one platform's image as a zstd docker-archive for offline devices, with its sha256."""
    from edgefleet.digest import sha256_file
    from edgefleet.image.build import arch_of
    from edgefleet.image.ship import save_platform

    platforms = _platforms(c, platform)
    if len(platforms) != 1:
        raise UsageError("image.save: one --platform at a time (a device loads its own)")
    tag = _setting(c, "tag", tag)
    name = tag.rsplit("/", 1)[-1].replace(":", "-")
    dest = Path(out) if out else paths.build_dir(c) / "images" / f"{name}-{arch_of(platforms[0])}.tar.zst"
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_platform(tag, platforms[0], dest, int(level))
    digest = sha256_file(dest)
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB), sha256 {digest}")
    print(f"on the device: sha256sum -c {dest.name}.sha256 && zstd -dc {dest.name} | docker load")


@task(help={
    "platform": "platforms to test (default: linux/arm64,linux/amd64)",
    "tag": "image tag (default edgefleet/runtime:latest)",
    "bundle": "bundle directory (default: config edgefleet.bundle)",
    "runs": "timed selftest runs per golden text (default 1: emulation is slow)",
    "min_cosine": "least cosine between two platforms' embeddings of a golden text (default 0.9999)",
    "json": "print one JSON document instead of the table",
    "texts": "compare the embeddings of this file's lines instead of the golden texts",
    "first": "with --texts: only the first N lines (each is slow under emulation)",
    "qemu_cpu": "CPU model qemu-user emulates for a foreign platform (default neoverse-n1)",
})
@exits_on_user_error
def test(c, platform=None, tag=None, bundle=None, runs=1, min_cosine=0.9999, json_=False,
         texts=None, first=None, qemu_cpu=None):
    """Selftest each platform's image (arm64 under QEMU) and compare their embeddings."""
    from edgefleet.image.check import QEMU_CPU, check_images, texts_from_file

    bundle_dir = Path(bundle).resolve() if bundle else paths.bundle_dir(c)
    if first and not texts:
        raise UsageError("image.test: --first needs --texts")
    lines = texts_from_file(Path(texts), int(first) if first else None) if texts else None
    report = check_images(_setting(c, "tag", tag), _platforms(c, platform), bundle_dir,
                          runs=int(runs), min_cosine=float(min_cosine), texts=lines,
                          qemu_cpu=qemu_cpu or QEMU_CPU)
    if json_:
        print(json.dumps(report, indent=2))
    else:
        for name, result in report["platforms"].items():
            golden = min(result["golden_cosines"], default=float("nan"))
            p50 = result["latency_ms"].get("p50", float("nan"))
            mark = " (emulated)" if result["emulated"] else ""
            verdict = "PASS" if result["selftest_passed"] else "FAIL"
            print(f"{name:12} {verdict} selftest: min cosine vs golden {golden:.6f}, "
                  f"p50 {p50:.1f} ms{mark}  [{result['image']}]")
            if result["error"]:
                print("  " + result["error"].replace("\n", "\n  "))
        for pair in report["cross"]["pairs"]:
            shown = f"{pair['min_cosine']:.6f}" if pair["min_cosine"] is not None else "n/a"
            mean = f"{pair['mean_cosine']:.6f}" if pair["mean_cosine"] is not None else "n/a"
            print(f"{pair['a']} vs {pair['b']}, {report['texts']} texts: min cosine {shown}, "
                  f"mean {mean} "
                  f"(need >= {report['cross']['threshold']}) "
                  f"{'PASS' if pair['passed'] else 'FAIL'}")
    if not report["passed"]:
        raise Exit("image.test: FAILED", code=1)


@task(help={"python": "Python X.Y of the images' base (default 3.11)"})
@exits_on_user_error
def lock(c, python=None):
    """Pin the runtime's wheels with hashes for every platform: docker/runtime/requirements.lock."""
    from edgefleet.image import context
    from edgefleet.image.build import PLATFORMS, arch_of

    python = _setting(c, "python", python)
    dest = context.recipe_dir() / "requirements.lock"
    context.write_lock(paths.repo_root() / "payload" / "requirements.txt", dest,
                       tuple(arch_of(p) for p in PLATFORMS), python)
    print(f"wrote {dest}")


ns = Collection("image", build, save, test, lock)  # DEFAULTS: tasks.py puts them under edgefleet.image
