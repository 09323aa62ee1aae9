"""Runtime image: cold build, rebuild after a one-line payload change, sizes and layers.

    .venv/bin/python benchmarks/bench_image.py [--platform linux/arm64,linux/amd64] [--base local] [--json]

Builds the runtime image under its own tag (edgefleet/runtime-bench:<slot>) with the engine
DOCKER_HOST points at. "cold" is a build with BuildKit's cache off (--no-cache) on bases that
exist (the debootstrap base is cached by recipe hash; the first run on a fresh clone also
builds it and says so); "rebuild" is the next build after one comment line is appended to a
copy of payload/edge_runtime/__init__.py (the repo is not touched). The ratio of the two is
the claim; seconds are this machine's under its current load. Sizes per platform come from
the platform's docker-archive (image.save's format): raw layers, then zstd -19.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgefleet import engine  # noqa: E402
from edgefleet.image import archive, build  # noqa: E402
from edgefleet.lab.plan import slot  # noqa: E402

MB = 1e6


def _timed_build(platforms, tag, base, payload, no_cache=False) -> float:
    started = time.monotonic()
    build.build(REPO / "build", platforms, tag, base, payload=payload, no_cache=no_cache)
    return time.monotonic() - started


def _sizes(tag: str, platform: str, work: Path) -> dict:
    raw, cut, packed = work / "save.tar", work / "image.tar", work / "image.tar.zst"
    engine.save_image(build.resolve_ref(tag, platform), raw)
    archive.platform_archive(raw, cut, platform, tag)
    layers = archive.layer_sizes(cut)
    started = time.monotonic()
    archive.compress(cut, packed, level=19)
    zstd_s = time.monotonic() - started
    result = {"uncompressed_mb": sum(size for _, size in layers) / MB,
              "zstd_mb": packed.stat().st_size / MB, "zstd_seconds": zstd_s,
              "layers": [{"step": step, "mb": size / MB} for step, size in layers]}
    for path in (raw, cut, packed):
        path.unlink(missing_ok=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="linux/arm64,linux/amd64")
    parser.add_argument("--base", default=build.LOCAL_BASE, help="base image or `local`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    platforms = build.parse_platforms(args.platform)
    tag = f"edgefleet/runtime-bench:slot{slot()}"
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-image-") as tmp:
        work = Path(tmp)
        payload = work / "edge_runtime"
        shutil.copytree(REPO / "payload" / "edge_runtime", payload,
                        ignore=shutil.ignore_patterns("__pycache__"))
        prepare = _timed_build(platforms, tag, args.base, payload)  # bases, wheels, context
        cold = _timed_build(platforms, tag, args.base, payload, no_cache=True)
        with open(payload / "__init__.py", "a") as handle:
            handle.write(f"# bench_image one-line change {time.time()}\n")
        rebuild = _timed_build(platforms, tag, args.base, payload)
        sizes = {p: _sizes(tag, p, work) for p in platforms}
    report = {"engine": engine.features().server_version, "platforms": platforms,
              "first_build_seconds": prepare, "cold_build_seconds": cold,
              "rebuild_after_payload_change_seconds": rebuild,
              "cold_over_rebuild": cold / rebuild if rebuild else None, "sizes": sizes,
              "goals": {"rebuild_seconds": 15, "uncompressed_mb": 200, "zstd_mb": 70}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"engine dockerd {report['engine']}, platforms {', '.join(platforms)}")
    print(f"first build (bases, wheels, context as cached): {prepare:7.1f} s")
    print(f"cold build (--no-cache):                       {cold:7.1f} s")
    print(f"rebuild after a one-line payload change:       {rebuild:7.1f} s   (goal <= 15 s; "
          f"cold/rebuild = {report['cold_over_rebuild']:.1f}x)")
    for platform, size in sizes.items():
        print(f"{platform}: {size['uncompressed_mb']:.1f} MB uncompressed (goal <= 200), "
              f"{size['zstd_mb']:.1f} MB zstd -19 (goal <= 70; {size['zstd_seconds']:.0f} s to compress)")
        for layer in size["layers"]:
            print(f"    {layer['mb']:8.2f} MB  {layer['step'][:90] or '(base image)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
