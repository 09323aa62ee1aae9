"""Build the runtime image for one or more platforms: decide the tags, then run buildx.

One tag holds every platform when the engine keeps images in containerd's store; otherwise
each platform gets its own tag `<tag>-<arch>` and the plan says what is missing. Every image
carries the label `edgefleet.platforms`, so later steps find the image for a platform by
reading labels (`pick_ref`), whichever engine built it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet import engine
from edgefleet.device_env import EnvError
from edgefleet.image import base, context

from ..errors import EdgefleetError, InputError

__all__ = ["ImageError", "ImageInputError", "BuildStep", "BuildPlan", "PLATFORMS", "LOCAL_BASE", "RUNTIME_BASE",
           "parse_platforms", "arch_of", "plan_builds", "pick_ref", "resolve_ref", "build"]

PLATFORMS = ("linux/amd64", "linux/arm64")
PLATFORMS_LABEL = "edgefleet.platforms"
LOCAL_BASE = "local"
RUNTIME_BASE = base.Recipe("runtime-base", "edgefleet/runtime-base")


class ImageError(EdgefleetError):
    """A runtime image could not be built, found or checked; the message says why."""


class ImageInputError(InputError, ImageError):
    """What was asked of an image task cannot work (a platform, a texts file, a bundle); exit status 2."""


@dataclass(frozen=True)
class BuildStep:
    """One buildx run: a tag and the platforms it holds."""

    tag: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class BuildPlan:
    """The buildx runs for a request, and a note when the engine could not do it in one tag."""

    steps: tuple[BuildStep, ...]
    note: str = ""


def parse_platforms(text: str) -> list[str]:
    """Return the platforms of `linux/arm64,linux/amd64` (order kept, no repeats), checked."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item not in PLATFORMS:
            raise ImageInputError(f"unknown platform {item!r}; supported: {', '.join(PLATFORMS)}")
        if item not in found:
            found.append(item)
    if not found:
        raise ImageInputError(f"no platform given; supported: {', '.join(PLATFORMS)}")
    return found


def arch_of(platform: str) -> str:
    """Return the arch of a platform (`linux/arm64` -> `arm64`)."""
    return platform.split("/")[1]


def _missing(features: engine.Features) -> str:
    if not features.buildx:
        return ("the docker CLI has no buildx plugin (Debian trixie's docker-buildx; "
                "scripts/setup.sh installs it)")
    return (f"dockerd {features.server_version} keeps images in its graph-driver store, which "
            "cannot hold several platforms under one tag (BuildKit: \"docker exporter does not "
            "currently support exporting manifest lists\"); that needs dockerd >= 24 with the "
            "containerd image store (\"features\": {\"containerd-snapshotter\": true} in "
            "daemon.json), as scripts/setup.sh configures it")


def plan_builds(platforms: list[str], tag: str, features: engine.Features) -> BuildPlan:
    """Return the buildx runs for `platforms` under `tag` on an engine with `features`."""
    if len(platforms) == 1 or features.multi_platform:
        return BuildPlan((BuildStep(tag, tuple(platforms)),))
    steps = tuple(BuildStep(f"{tag}-{arch_of(p)}", (p,)) for p in platforms)
    note = (f"multi-platform image not possible here: {_missing(features)}. Building one tag "
            f"per platform instead: {', '.join(step.tag for step in steps)}")
    return BuildPlan(steps, note)


def pick_ref(tag: str, platform: str, labels: dict[str, dict | None]) -> str | None:
    """Return the image (`tag` or `tag-<arch>`) whose labels say it holds `platform`."""
    for ref in (tag, f"{tag}-{arch_of(platform)}"):
        found = labels.get(ref)
        if found is not None and platform in found.get(PLATFORMS_LABEL, "").split(","):
            return ref
    return None


def resolve_ref(tag: str, platform: str) -> str:
    """Return the local image holding `platform` for `tag`, or raise naming what to build."""
    refs = (tag, f"{tag}-{arch_of(platform)}")
    ref = pick_ref(tag, platform, {r: engine.image_labels(r) for r in refs})
    if ref is None:
        raise ImageError(f"no runtime image for {platform} (looked for {' and '.join(refs)}); "
                         f"run `invoke image.build --platform {platform} --tag {tag}`")
    return ref


def _base_args(base_image: str, arches: list[str], build_dir: Path) -> dict[str, str]:
    if base_image != LOCAL_BASE:
        return {"BASE": base_image}
    return {f"BASE_{arch.upper()}": base.ensure_base(RUNTIME_BASE, arch, build_dir) for arch in arches}


def build(build_dir: Path, platforms: list[str], tag: str, base_image: str,
          python: str = "3.11", payload: Path | None = None, no_cache: bool = False) -> BuildPlan:
    """Assemble the context, make the bases if local, and build every step of the plan."""
    features = engine.features()
    plan = plan_builds(platforms, tag, features)
    if plan.note:
        print(f"image: {plan.note}", flush=True)
    arches = [arch_of(p) for p in platforms]
    started = time.monotonic()
    try:
        ctx = context.assemble(build_dir, arches, python, payload)
    except (context.ContextError, EnvError) as exc:
        raise ImageError(str(exc)) from exc
    args = _base_args(base_image, arches, build_dir)
    print(f"image: context ready in {time.monotonic() - started:.1f} s ({ctx.directory})", flush=True)
    for step in plan.steps:
        labels = {PLATFORMS_LABEL: ",".join(step.platforms), "edgefleet.python": python,
                  "edgefleet.base": base_image}
        started = time.monotonic()
        try:
            engine.build_image(ctx.directory, step.tag, ",".join(step.platforms), args, labels,
                               dockerfile=ctx.dockerfile, no_cache=no_cache)
        except engine.EngineError as exc:
            hint = ("" if base_image == LOCAL_BASE else
                    f"\n(base {base_image} must be local or pullable; offline, use --base local)")
            raise ImageError(f"{exc}{hint}") from exc
        print(f"image: {step.tag} ({', '.join(step.platforms)}) built in "
              f"{time.monotonic() - started:.1f} s", flush=True)
    return plan
