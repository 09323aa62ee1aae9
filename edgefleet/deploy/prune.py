"""Keep the last N releases on a device: decide what goes (pure), then delete it (after a commit).

The active release and the previous committed one (where `rollback` goes) always stay, whatever
N is. Objects, unpacked package envs and leftovers of killed deploys (`*.tmp`) that no kept
release refers to go with them, and so do TensorRT engine caches (`cache/trt/<key>/`, whose
key.json names the model files they serve) built for a model no kept release has. Runs only
while the deploy lock is held.
"""

from __future__ import annotations

import json
import re
from shlex import quote

from ..render import ENGINE_CACHE
from .device import docker_argv
from .state import parse_state

__all__ = ["committed_releases", "previous_committed", "choose_releases", "unreferenced", "unused_images",
           "unused_caches", "listing_command", "parse_listing", "prune"]

_MARKS = ("--releases--", "--envs--", "--objects--", "--caches--")
CACHE_KEY = re.compile(r"[0-9a-f]{8,64}")  # a key directory's name (timing-* and strays are never touched)
SHA256 = re.compile(r"[0-9a-f]{64}")


def committed_releases(history: list[dict]) -> list[str]:
    """Return the releases that passed their gate and became active, oldest first (repeats kept)."""
    return [e["active"] for e in history if isinstance(e, dict) and e.get("healthy") and e.get("active")]


def previous_committed(history: list[dict], active: str | None) -> str | None:
    """Return the most recent committed release other than `active` (where a rollback goes)."""
    return next((r for r in reversed(committed_releases(history)) if r != active), None)


def choose_releases(releases: set[str], history: list[dict], active: str | None,
                    keep: int) -> tuple[list[str], list[str]]:
    """Return (kept, deleted) release ids: the active, the previous committed, then the most recently
    used up to `keep`."""
    last_use: dict[str, int] = {}
    for i, entry in enumerate(history):
        for key in ("release", "active", "previous"):
            if isinstance(entry, dict) and entry.get(key):
                last_use[entry[key]] = i
    complete = {r for r in releases if not r.endswith(".tmp")}
    must = [r for r in (active, previous_committed(history, active)) if r in complete]
    by_recency = sorted(complete - set(must), key=lambda r: (last_use.get(r, -1), r), reverse=True)
    kept = list(dict.fromkeys(must + by_recency[:max(keep - len(must), 0)]))
    return kept, sorted(releases - set(kept))


def _used(manifests: dict[str, tuple[str, dict]], kept: list[str]) -> tuple[set, set]:
    """Return (objects, envs) the kept releases refer to."""
    used_objects, used_envs = set(), set()
    for rid in kept:
        sha, m = manifests.get(rid, ("", {}))
        used_objects |= {sha, *m.get("files", {}).values(), *m.get("tuning", {}).values(),
                         *m.get("compiled", {}).values()}
        # the packages' tarball is dropped once unpacked (its env dir is what a release uses)
        used_objects |= {m.get("unit", {}).get("sha256"), m.get("image", {}).get("sha256")}
        used_envs.add(m.get("env", {}).get("sha256"))
    return used_objects, used_envs


def unreferenced(manifests: dict[str, tuple[str, dict]], kept: list[str], objects: set[str],
                 envs: set[str]) -> tuple[list[str], list[str]]:
    """Return (objects, envs) no kept release refers to; `manifests`: id -> (manifest sha256, manifest)."""
    used_objects, used_envs = _used(manifests, kept)
    return sorted(objects - used_objects), sorted(envs - used_envs)


def unused_caches(caches: dict[str, dict | None], manifests: dict[str, tuple[str, dict]], kept: list[str]) -> list[str]:
    """Return the engine cache keys no kept release uses: those whose key.json `model_files` are not
    all objects of a kept release, or that have no readable key.json (the runtime writes it before
    it builds anything: such a directory was never finished; a rebuild costs time, never a result)."""
    used_objects = _used(manifests, kept)[0]
    dead = []
    for name, key in caches.items():
        if not CACHE_KEY.fullmatch(name):
            continue
        files = key.get("model_files") if isinstance(key, dict) else None
        shas = list(files.values()) if isinstance(files, dict) else []
        if not shas or not all(isinstance(sha, str) and SHA256.fullmatch(sha) and sha in used_objects
                                for sha in shas):
            dead.append(name)
    return sorted(dead)


def unused_images(manifests: dict[str, tuple[str, dict]], kept: list[str], gone: list[str]) -> list[str]:
    """Return the image IDs the `gone` releases ran that no kept release runs (never any other image)."""
    def image_ids(ids):
        return {manifests.get(r, ("", {}))[1].get("image", {}).get("id") for r in ids} - {None}
    return sorted(image_ids(gone) - image_ids(kept))


def listing_command(root: str) -> str:
    """Return a command printing state.json, every release with its manifest (id sha json), envs and objects."""
    return "\n".join([
        f"root={quote(root)}",
        'cat "$root/state.json" 2>/dev/null',
        f"echo; echo {_MARKS[0]}",
        'for r in "$root"/releases/*; do [ -e "$r" ] || continue; n=$(basename "$r")',
        '  if [ -f "$r/manifest.json" ]; then printf "%s %s " "$n" "$(sha256sum < "$r/manifest.json" | cut -c1-64)";'
        ' tr -d "\\n" < "$r/manifest.json"; echo; else echo "$n"; fi; done',
        f"echo {_MARKS[1]}", 'ls -1 "$root/envs" 2>/dev/null',
        f"echo {_MARKS[2]}", 'ls -1 "$root/objects" 2>/dev/null',
        # each engine cache's key.json on one line (capped): what model it serves
        f"echo {_MARKS[3]}",
        f'for c in "$root"/{ENGINE_CACHE}/*/; do [ -d "$c" ] || continue; printf "%s " "$(basename "$c")";'
        ' head -c 65536 "$c/key.json" 2>/dev/null | tr -d "\n"; echo; done', "true",
    ])


def parse_caches(text: str) -> dict[str, dict | None]:
    """Parse the listing's cache lines ("<key> <key.json>"): key -> key.json, None when unreadable."""
    caches: dict[str, dict | None] = {}
    for line in text.strip().splitlines():
        name, _, doc = line.strip().partition(" ")
        try:
            parsed = json.loads(doc) if doc else None
        except ValueError:
            parsed = None
        caches[name] = parsed if isinstance(parsed, dict) else None
    return caches


def parse_listing(output: str) -> tuple[dict | None, dict[str, tuple[str, dict]], set[str], set[str], set[str]]:
    """Parse `listing_command` output: (state, manifests, release ids, envs, objects).

    `state` is None when state.json is unreadable or of the wrong shape (never taken as empty).
    """
    state_text, _, rest = output.partition(_MARKS[0])
    rel_text, _, rest = rest.partition(_MARKS[1])
    env_text, _, obj_text = rest.partition(_MARKS[2])
    obj_text = obj_text.partition(_MARKS[3])[0]
    state: dict | None = {"current": None, "history": []}
    if state_text.strip():
        try:
            parsed = parse_state(state_text)
            state = {"current": parsed.current, "history": list(parsed.history)}
        except ValueError:
            state = None
    manifests, releases = {}, set()
    for line in rel_text.strip().splitlines():
        rid, _, tail = line.partition(" ")
        releases.add(rid)
        sha, _, doc = tail.partition(" ")
        try:
            manifests[rid] = (sha, json.loads(doc)) if doc else ("", {})
        except ValueError:
            manifests[rid] = (sha, {})
    return state, manifests, releases, set(env_text.split()), set(obj_text.split())


def prune(dev, active: str | None, log) -> list[str]:
    """Delete what the device no longer needs beyond the last `deploy.keep_releases`; return the release ids deleted."""
    listing = dev.run(listing_command(dev.root), "list releases", privileged=False).stdout
    state, manifests, releases, envs, objects = parse_listing(listing)
    caches = parse_caches(listing.partition(_MARKS[3])[2])
    # without a sound history the last committed release cannot be told apart (names rank
    # nothing): keep everything until a deploy has written a sound state.json again
    if state is None or not state["history"] and releases - {active}:
        log("  prune skipped: state.json is unreadable or has no history, so nothing is known to be unused")
        return []
    history = state["history"]
    kept, gone = choose_releases(releases, history, active, dev.target.settings.deploy.keep_releases)
    # a release without a readable manifest keeps everything (we cannot tell what it uses)
    if any(not manifests.get(r, ("", {}))[1] for r in kept):
        dead_objects: list[str] = []
        dead_envs: list[str] = []
        dead_caches: list[str] = []
    else:
        dead_objects, dead_envs = unreferenced(manifests, kept, objects, envs)
        dead_caches = unused_caches(caches, manifests, kept)
    if dead_caches:  # owned by the service user: removed as root
        dev.system(["rm", "-rf", "--", *[dev.path(ENGINE_CACHE, c) for c in dead_caches]],
                   "prune unused engine caches")
        log(f"  pruned {len(dead_caches)} TensorRT engine cache(s) no kept release uses "
            f"({', '.join(c[:12] for c in dead_caches)}); kept "
            f"{sum(bool(CACHE_KEY.fullmatch(c)) for c in caches) - len(dead_caches)}")
    if not gone:
        return []
    # an image goes only when a release that ran it goes, and no kept one runs it; a release
    # without a readable manifest among the gone ones leaves its image (unknown) in place
    dead_images = unused_images(manifests, kept, gone)
    paths = ([dev.path("releases", r) for r in gone] + [dev.path("envs", e) for e in dead_envs]
             + [dev.path("objects", o) for o in dead_objects])
    dev.run("rm -rf -- " + " ".join(quote(p) for p in paths), "prune old releases")
    removed = 0
    for image_id in dead_images:
        argv = docker_argv(dev.target, "image", "rm", image_id.split(":", 1)[-1])
        res = dev.run(" ".join(quote(a) for a in argv), "remove an unused image", privileged=False, warn=True)
        if res.exited == 0:
            removed += 1
        else:
            log(f"  note: image {image_id[:19]} stays: {(res.stderr or res.stdout).strip()[-200:]}")
    images = f", {removed} image(s)" if dead_images else ""
    log(f"  pruned {len(gone)} old release(s) ({', '.join(gone)}), {len(dead_objects)} object(s), "
        f"{len(dead_envs)} package env(s){images}; kept {', '.join(kept)}")
    return gone
