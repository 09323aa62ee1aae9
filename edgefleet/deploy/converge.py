"""Converge a device to its release: find what changed on it since it was verified, and put it back.

Every object is verified by sha256 when it arrives, then given the mtime of a stamp file
(`objects/.mtime0`, the epoch). Any later write to an object, or to a release file linked to it,
moves its mtime past the stamp's, and so does a replaced file (`sed -i`, an editor's save). So a
deploy finds changed files with the shell's `-nt` and `-ef` tests, as cheap as listing them, and
hashes only the few it suspects: a no-op deploy reads no file's bytes. Files meant to be edited
on a device (`COPIED_FILES`) are copies, never links: editing them cannot change an object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from shlex import quote

from .device import Device

__all__ = ["COPIED_FILES", "STAMP", "ReleaseDrift", "release_check_lines", "parse_release_drift",
           "stamp_command", "verify_objects", "repair_command", "describe_drift", "kept_release_repairs"]

COPIED_FILES = ("runtime.yaml",)  # in a release dir: copies of their objects, never hard links
STAMP = ".mtime0"  # in objects/: mtime 0; every verified object and copy carries the same mtime
# a release's directories (their mtimes are the stamp's once built): a file added, removed or
# replaced in one moves its mtime
_RELEASE_DIRS = ("", "bundle", "payload", "payload/edge_runtime", "payload/edge_runtime/__pycache__")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = {"missing": "missing on the device", "edited": "edited on the device",
          "unlinked": "replaced on the device (no longer the release's own file)"}


@dataclass(frozen=True)
class ReleaseDrift:
    """How the active release's files differ from its manifest, and which objects changed since verified."""

    files: tuple[tuple[str, str, str], ...] = ()  # (path in the release, kind: missing | edited | unlinked,
    #                                                sha256 its manifest on the device gives, "" for manifest.json)
    suspect_objects: frozenset[str] = frozenset()  # written to since verified (bytes to be hashed again)


def stamp_command(root_q: str) -> str:
    """Return sh creating the stamp file (mtime 0) under objects/ when it is missing."""
    stamp = f"{root_q}/objects/{STAMP}"
    return f"{{ [ -e {stamp} ] || TZ=UTC0 touch -t 197001010000.00 {stamp}; }}"


def release_check_lines(release: str = "$root/current", always: bool = False) -> list[str]:
    """Return sh lines (with $root set) printing `release_drift=<kind>:<path>:<sha256> ...` for every
    file of the release at `release` (default: the active one) that is missing, newer than the
    stamp, or not its object's own file, and `suspects=<sha256> ...` for every object newer than the
    stamp (all of them when there is no stamp).

    The manifest is read line by line only when a cheap sign says something changed (most no-op
    deploys read none): an object written to, the copied files or the manifest newer than the
    stamp, or a directory of the release (their mtimes are the stamp's too: adding, removing or
    replacing a file, as `sed -i` does, moves its directory's). `always`: read it whatever the
    signs say (a rollback, about to trust a release nobody ran for a while).
    """
    copies = "|".join(quote(p) for p in COPIED_FILES)
    dirs = " ".join(f'"{release}/{d}"' for d in _RELEASE_DIRS)
    checked = " ".join(f'"{release}/{p}"' for p in (*COPIED_FILES, "manifest.json"))
    return [
        f'st="$root/objects/.mtime0"; [ -e "$st" ] || st=; look={"1" if always else ""}; sus=; dr=',
        'for f in "$root"/objects/*; do [ -e "$f" ] && { [ -z "$st" ] || [ "$f" -nt "$st" ]; } && '
        'sus="$sus ${f##*/}" && look=1; done',
        f'm="{release}/manifest.json"',
        f'[ -n "$st" ] && [ -z "$look" ] && for f in {checked} {dirs}; do '
        '[ -e "$f" ] && [ "$f" -nt "$st" ] && look=1 && break; done',
        'if [ -n "$st" ] && [ -n "$look" ] && [ -f "$m" ]; then',
        '  [ "$m" -nt "$st" ] && dr="$dr edited:manifest.json:"',
        '  sec=; while IFS= read -r l; do case $l in',
        "    '  \"files\": {'|'  \"compiled\": {') sec=1 ;;",
        "    '  }'*) sec= ;;",
        '    *) [ -n "$sec" ] || continue; l=${l#*\\"}; p=${l%%\\"*}; s=${l#*\\": \\"}; s=${s%%\\"*}',
        f'       f="{release}/$p"',
        '       if [ ! -e "$f" ]; then dr="$dr missing:$p:$s"',
        '       elif [ "$f" -nt "$st" ]; then dr="$dr edited:$p:$s"',
        f'       else case $p in {copies}) ;; *) [ "$f" -ef "$root/objects/$s" ] || '
        'dr="$dr unlinked:$p:$s" ;; esac',
        '       fi ;;',
        '  esac; done < "$m"',
        'fi',
        'echo "suspects=$sus"; echo "release_drift=$dr"',
    ]


def parse_release_drift(values: Mapping[str, str]) -> ReleaseDrift:
    """Read the `suspects=` and `release_drift=` lines of `release_check_lines` (a name that is not a
    sha256 or a path that climbs out of the release is dropped: device output is not trusted)."""
    suspects = {s for s in values.get("suspects", "").split() if _SHA256.fullmatch(s)}
    files = set()
    for word in values.get("release_drift", "").split():
        kind, _, rest = word.partition(":")
        path, _, sha = rest.rpartition(":")
        if kind in _KINDS and path and ".." not in path.split("/") and not path.startswith("/"):
            files.add((path, kind, sha if _SHA256.fullmatch(sha) else ""))
    return ReleaseDrift(tuple(sorted(files)), frozenset(suspects))


def describe_drift(files: tuple[tuple[str, str, str], ...]) -> list[str]:
    """Return one line a person reads per drifted file: `runtime.yaml edited on the device`."""
    return [f"{path} {_KINDS[kind]}" for path, kind, _ in files]


def kept_release_repairs(drift: ReleaseDrift, corrupt: set[str] | frozenset[str],
                         objects: frozenset[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split a kept release's drifted files into those its verified objects put back, as
    (path, sha256), and a line naming each one nothing on the device can put back.

    A file whose object is corrupt or gone cannot be repaired from the device; neither can an
    edited manifest.json (the list every other file is checked against)."""
    repairs: list[tuple[str, str]] = []
    refusals: list[str] = []
    for path, kind, sha in drift.files:
        what = f"{path} {_KINDS[kind]}"
        if not sha:
            refusals.append(f"{what} (the list of the release's files cannot be trusted)")
        elif sha in corrupt:
            refusals.append(f"{what}, and its object {sha[:12]} no longer matches its sha256")
        elif sha not in objects:
            refusals.append(f"{what}, and its object {sha[:12]} is not on the device")
        else:
            repairs.append((path, sha))
    return repairs, refusals


def verify_objects(dev: Device, suspects: list[str], restamp: bool = True) -> set[str]:
    """Hash `suspects` (objects written to since verified) on the device; return those that are not
    their sha256 any more. The others get the stamp's mtime back (unless `restamp` is False: a dry run)."""
    if not suspects:
        return set()
    objects = quote(dev.path("objects"))
    names = " ".join(quote(s) for s in sorted(suspects))
    touch = f"touch -r {STAMP} -- \"${{f}}\"; " if restamp else ""
    script = (f"cd {objects} && {stamp_command(quote(dev.root))} && sha256sum -- {names} 2>/dev/null | "
              f"while read -r h f; do if [ \"$h\" = \"$f\" ]; then {touch}echo \"ok=$f\"; fi; done; true")
    out = dev.run(script, "verify changed objects", privileged=restamp).stdout
    good = {line[3:].strip() for line in out.splitlines() if line.startswith("ok=")}
    return set(suspects) - good


def repair_command(dev: Device, files: list[tuple[str, str]], release_dir: str | None = None) -> str:
    """Return sh putting each (path, sha256) of the release at `release_dir` (default: the active
    one) back from its verified object: a copy (with the stamp's mtime) for `COPIED_FILES`, a hard
    link for the rest."""
    current, objects = release_dir or dev.path("current"), dev.path("objects")
    steps = []
    for path, sha in files:
        dest, obj = quote(f"{current}/{path}"), quote(f"{objects}/{sha}")
        if path in COPIED_FILES:
            tmp = quote(f"{current}/.{path}.repair")
            steps.append(f"cp -f {obj} {tmp} && touch -r {quote(objects + '/' + STAMP)} {tmp} && chmod 0644 {tmp} "
                         f"&& mv -f {tmp} {dest}")
        else:
            steps.append(f"mkdir -p \"$(dirname {dest})\" && ln -f {obj} {dest}")
    # the directories the repair wrote in get the mark back (else every later deploy reads the manifest)
    dirs = " ".join(quote(f"{current}/{d}") for d in _RELEASE_DIRS)
    steps.append(f"for d in {dirs}; do [ -d \"$d\" ] && touch -r {quote(objects + '/' + STAMP)} \"$d\"; done; true")
    return " && ".join(steps)
