"""What a deploy and `status` ask a device. Each fact is one `Fact`: the shell lines that print
its `key=value` lines beside the pure parser that reads them back into a typed value. A deploy
joins its facts into ONE remote script (one round trip a device); `status` joins its own list,
taking the shared facts (arch, current, committed, active, governors) from here.

The facts are read with the shell's builtins wherever they can be: every program started on a
board costs a fork and an exec (and far more under qemu-user). Nothing a device prints is
trusted: a parser that meets a shape it does not expect raises `FactError`, naming the key.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from shlex import quote
from typing import Generic, TypeVar

from ..errors import EdgefleetError
from ..inventory import Target
from ..render import TUNING_SCRIPT_PATH, TUNING_UNIT, UNIT_NAME
from .converge import ReleaseDrift, parse_release_drift, release_check_lines
from .device import Device, docker_argv

__all__ = ["Fact", "Facts", "FactError", "PlanError", "Values", "facts_command", "parse_facts", "ask_facts",
           "read_values", "script", "MIN_FREE_BYTES", "check_room", "ARCH_NAMES", "ARCH", "CURRENT", "COMMITTED",
           "ACTIVE", "GOVERNORS", "LOCK", "RELEASE_DRIFT"]


ARCH_NAMES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "amd64", "amd64": "amd64"}

T = TypeVar("T")

Values = Mapping[str, str]  # a script's `key=value` lines, by key (the objects' names under OBJECTS_KEY)

OBJECTS_KEY = "--objects--"  # printed as a line of its own; the objects' names follow, one a line


class PlanError(EdgefleetError):
    """The device cannot take this release as it is (its facts say why), or did not say what it is."""


class FactError(PlanError):
    """A device printed a fact in a shape its parser does not take (or left a needed one out)."""


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One question to a device: `lines(target)` are the sh lines that print its `key=value`
    lines (with `$root` set, see `script`), `parse(values)` reads them back into a typed value."""

    lines: Callable[[Target], list[str]]
    parse: Callable[[Values], T]


def script(target: Target, facts: Iterable[Fact]) -> str:
    """Return ONE shell command printing every fact in `facts`, for `read_values`."""
    lines = [
        f"root={quote(target.settings.root)}",
        "nl='\n'",
        # `on_path x` sets $w to x's path, like `command -v x` without the subshell a $(...) forks
        # (its own _-names: the script's variables stay untouched whenever it is called)
        'on_path() { w=; _o=$IFS; IFS=:; for _d in $PATH; do [ -f "$_d/$1" ] && [ -x "$_d/$1" ] && w=$_d/$1 && '
        'break; done; IFS=$_o; }',
    ]
    for fact in facts:
        lines += fact.lines(target)
    return "\n".join([*lines, "true"])


def read_values(output: str) -> dict[str, str]:
    """Split a script's output into its `key=value` lines (values stripped); what follows the
    objects mark is kept, one name a line, under OBJECTS_KEY."""
    head, mark, objects = output.partition(OBJECTS_KEY)
    values: dict[str, str] = {}
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    if mark:
        values[OBJECTS_KEY] = objects
    return values


def _needed(values: Values, key: str) -> str:
    if key not in values:
        raise FactError(f"device facts incomplete (missing {key})")
    return values[key]


def _flag(key: str) -> Callable[[Values], bool]:
    return lambda values: values.get(key) == "yes"


def _text(key: str, default: str | None = None) -> Callable[[Values], str | None]:
    return lambda values: values.get(key) or default


def _names(key: str) -> Callable[[Values], frozenset[str]]:
    return lambda values: frozenset(values.get(key, "").split())


def _static(*lines: str) -> Callable[[Target], list[str]]:
    return lambda target: list(lines)


def _release_name(value: str) -> str | None:
    """A release's directory name (`r-<hex>`, or whatever a person put there), never a path."""
    name = value.rsplit("/", 1)[-1]
    if name and not (name.isascii() and name.replace("-", "").replace(".", "").replace("_", "").isalnum()):
        raise FactError(f"device facts: {value!r} is not a release name")
    return name or None


# -- the facts ----------------------------------------------------------------------------------

# the arch the device's programs run as: bash's own (set when it was built, no uname started),
# else uname's -- not /proc/sys/kernel/arch, which under qemu-user (the lab's arm64 devices) is
# the host kernel's, as a 64-bit kernel's is under a 32-bit userland
ARCH: Fact[str] = Fact(_static('echo "arch=${HOSTTYPE:-$(uname -m)}"'),
                       lambda values: ARCH_NAMES.get(_needed(values, "arch"), values["arch"]))

_PYTHONS = ("3.13", "3.12", "3.11", "3.10", "3.9", "3.14", "3.8")  # tried after the inventory's own version


def _python_lines(target: Target) -> list[str]:
    # python3 is the same file as python3.X (the expected version first): no Python start-up
    # (slow on a busy board) and no readlink; anything else is asked
    versions = " ".join(dict.fromkeys([target.settings.python, *_PYTHONS]))
    return ['v=; on_path python3; p=$w; [ -n "$p" ] && for x in ' + versions +
            '; do [ "$p" -ef "${p%/*}/python$x" ] && v=$x && break; done',
            "[ -n \"$v\" ] || v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null)",
            'echo "python=$v"']


PYTHON: Fact[str] = Fact(_python_lines, lambda values: _needed(values, "python"))

SYSTEMD: Fact[bool] = Fact(_static('if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi'),
                           lambda values: _needed(values, "systemd") == "yes")

# the release `current` leads to, by comparing files (test -ef), not with readlink: a link to a
# release that is gone is no current release
CURRENT: Fact[str | None] = Fact(
    _static('[ -L "$root/current" ] && for r in "$root"/releases/*; do '
            '[ "$root/current" -ef "$r" ] && echo "current=${r##*/}" && break; done'),
    lambda values: _release_name(values.get("current", "")))

# the release the last health gate passed for: line 2 of state.json (record_state writes it
# with indent 2, "current" first)
COMMITTED: Fact[str | None] = Fact(
    _static('c=; [ -r "$root/state.json" ] && { read -r _; read -r c; } < "$root/state.json"; '
            'case "$c" in *\'"current": "r-\'*) c=${c#*\'"current": "\'}; c=${c%%\'"\'*} ;; *) c= ;; esac; '
            'echo "committed=$c"'),
    lambda values: _release_name(values.get("committed", "")))


def _parse_lock(values: Values) -> tuple[str | None, int | None]:
    """The lock's owner line (`unknown` when it has none) and its age in seconds, or (None, None)."""
    owner = values.get("lock") or None
    age = values.get("lock_age", "")
    return owner, int(age) if age.lstrip("-").isascii() and age.lstrip("-").isdigit() else None


# the owner line, and the lock's age in seconds by the device's clock
LOCK: Fact[tuple[str | None, int | None]] = Fact(
    _static('if [ -e "$root/.lock" ]; then o=unknown; [ -r "$root/.lock/owner" ] && read -r o < "$root/.lock/owner"; '
            'echo "lock=${o:-unknown}"; echo "lock_age=$(( $(date +%s) - $(stat -c %Y "$root/.lock") ))"; fi'),
    _parse_lock)


def _parse_free(values: Values) -> int:
    kib = _needed(values, "free_kb")
    if not (kib.isascii() and kib.isdigit()):
        raise FactError(f"device facts: free_kb={kib!r} is not a number of KiB (df's output)")
    return int(kib) * 1024


# df's second line, fourth field (no piped subshell), for the root or its nearest existing parent
FREE: Fact[int] = Fact(_static('d="$root"; while [ ! -d "$d" ]; do d=${d%/*}; d=${d:-/}; done',
                               'f=$(df -Pk "$d"); f=${f#*"$nl"}; set -- $f; echo "free_kb=$4"'),
                       _parse_free)


def _sha256_line(files: dict[str, str]) -> str:
    """Return one line of sh printing `<key>=<sha256>` for each file that exists (one sha256sum for
    all; its output split into (hash, path) words by the shell, not read by a piped subshell)."""
    if any(not p or any(c.isspace() for c in p) for p in files.values()):
        raise ValueError(f"sha256 facts take paths without blanks: {sorted(files.values())}")
    cases = " ".join(f"{shlex.quote(path)}) echo {key}=$1 ;;" for key, path in files.items())
    return (f"h=$(sha256sum {' '.join(shlex.quote(p) for p in files.values())} 2>/dev/null); set -- $h; "
            f"while [ $# -ge 2 ]; do case $2 in {cases} esac; shift 2; done")


def _sha256(key: str) -> Callable[[Values], str | None]:
    def parse(values: Values) -> str | None:
        digest = values.get(key) or None
        if digest is not None and not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise FactError(f"device facts: {key}={digest!r} is not a sha256")
        return digest
    return parse


SYSTEM_FILES: Fact[dict[str, str | None]] = Fact(
    _static(_sha256_line({"unit_sha": f"/etc/systemd/system/{UNIT_NAME}",
                          "tuning_unit_sha": f"/etc/systemd/system/{TUNING_UNIT}",
                          "tuning_script_sha": TUNING_SCRIPT_PATH})),
    lambda values: {key: _sha256(key)(values) for key in ("unit_sha", "tuning_unit_sha", "tuning_script_sha")})


def _active_lines(target: Target) -> list[str]:
    """sh lines printing `active=<state>`: `active` when the unit's cgroup holds a process (read
    with builtins: cgroup v2, hybrid or v1, below whatever cgroup this session's systemd lives in,
    e.g. a container's), else what `systemctl is-active` says (a big program to start; most no-op
    re-runs never start it)."""
    unit = UNIT_NAME
    return [
        'g2=; g1=; while IFS= read -r l; do case $l in 0::*) g2=${l#0::} ;; '
        '*:name=systemd:*) g1=${l#*:name=systemd:} ;; '
        'esac; done < /proc/self/cgroup 2>/dev/null',
        'b2=${g2%%/system.slice/*}; b2=${b2%%/user.slice/*}; b1=${g1%%/system.slice/*}; b1=${b1%%/user.slice/*}',
        f'a=; for f in "/sys/fs/cgroup$b2/system.slice/{unit}/cgroup.procs" '
        f'"/sys/fs/cgroup/unified$b2/system.slice/{unit}/cgroup.procs" '
        f'"/sys/fs/cgroup/systemd$b1/system.slice/{unit}/cgroup.procs"; do '
        '[ -r "$f" ] && read -r p < "$f" && a=active && break; done',
        f'echo "active=${{a:-$(systemctl is-active {unit} 2>/dev/null)}}"',
    ]


ACTIVE: Fact[str] = Fact(_active_lines, lambda values: values.get("active") or "unknown")


def _user_lines(target: Target) -> list[str]:
    # /etc/passwd with builtins (useradd --system writes it); a user only NSS knows: id
    user = quote(target.settings.service_user)
    return [f'u=no; while IFS=: read -r n _; do [ "$n" = {user} ] && u=yes && break; done < /etc/passwd; '
            f'[ $u = yes ] || {{ id -u {user} >/dev/null 2>&1 && u=yes; }}; echo "user=$u"']


USER: Fact[bool] = Fact(_user_lines, _flag("user"))

OWNS_ROOT: Fact[bool] = Fact(
    _static('if [ -d "$root" ] && [ -O "$root" ] && [ -w "$root" ]; then echo owns_root=yes; '
            'else echo owns_root=no; fi'),
    _flag("owns_root"))


def _listing(key: str, directory: str) -> Fact[frozenset[str]]:
    """The names of `directory`'s entries under the root, with builtins only."""
    return Fact(_static(f'set -- "$root"/{directory}/*; n=; for f; do [ -e "$f" ] && n="$n ${{f##*/}}"; done; '
                        f'echo "{key}=$n"'), _names(key))


ENVS = _listing("envs", "envs")
RELEASES = _listing("releases", "releases")


def _parse_governors(values: Values) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((key.split(":", 1)[1], value) for key, value in values.items()
                        if key.startswith("governor:")))


# one line `governor:policyN=<governor>` per cpufreq policy (none without cpufreq)
GOVERNORS: Fact[tuple[tuple[str, str], ...]] = Fact(
    _static('for p in /sys/devices/system/cpu/cpufreq/policy*; do '
            '[ -r "$p/scaling_governor" ] && read -r g < "$p/scaling_governor" && echo "governor:${p##*/}=$g"; '
            'done'),
    _parse_governors)


def _docker_lines(target: Target) -> list[str]:
    """An image target's: is docker usable, which image IDs it has (none asked of other targets)."""
    if target.settings.ship != "image":
        return []
    listing = " ".join(shlex.quote(a) for a in docker_argv(target, "image", "ls", "--quiet", "--no-trunc"))
    return [
        "if command -v docker >/dev/null 2>&1; then",
        f"  if ids=$({listing} 2>&1); then echo docker=yes; echo \"images=$(echo \"$ids\" | tr '\\n' ' ')\"",
        "  else echo \"docker=$(echo \"$ids\" | tail -n 2 | tr '\\n' ' ' | cut -c1-300)\"; fi",
        "else echo docker=missing; fi",
    ]


DOCKER: Fact[tuple[str, frozenset[str]]] = Fact(
    _docker_lines, lambda values: (values.get("docker", "not asked"), _names("images")(values)))

ZSTD: Fact[bool] = Fact(_static('if command -v zstd >/dev/null 2>&1; then echo zstd=yes; else echo zstd=no; fi'),
                        _flag("zstd"))

# GNU tar (not busybox's): it reads a pipe in 1 MiB records (-b 2048 -B), a faster unpack
GNU_TAR: Fact[bool] = Fact(
    _static('on_path busybox; b=${w:-/nonexistent}; on_path tar; '
            '[ -n "$w" ] && ! [ "$w" -ef "$b" ] && echo gnu_tar=yes'),
    _flag("gnu_tar"))


def _parse_objects(values: Values) -> frozenset[str]:
    if OBJECTS_KEY not in values:
        raise FactError("device facts incomplete (missing objects)")
    return frozenset(n for n in values[OBJECTS_KEY].split() if len(n) == 64)


# the active release's files against its manifest, the objects written to since verified (converge.py)
RELEASE_DRIFT: Fact[ReleaseDrift] = Fact(lambda target: release_check_lines(), parse_release_drift)


# last: every line after the mark is an object's name
OBJECTS: Fact[frozenset[str]] = Fact(
    _static(f'echo {OBJECTS_KEY}', 'for f in "$root"/objects/*; do [ -e "$f" ] && echo "${f##*/}"; done'),
    _parse_objects)


DEPLOY_FACTS: tuple[Fact, ...] = (ARCH, PYTHON, SYSTEMD, CURRENT, COMMITTED, LOCK, FREE, SYSTEM_FILES, ACTIVE, USER,
                                  OWNS_ROOT, ENVS, RELEASES, GOVERNORS, DOCKER, ZSTD, GNU_TAR, RELEASE_DRIFT, OBJECTS)


@dataclass(frozen=True)
class Facts:
    """What the device has now."""

    arch: str
    python: str
    systemd: bool
    current: str | None
    committed: str | None
    lock_owner: str | None
    free_bytes: int
    unit_sha256: str | None
    service_active: str
    user_exists: bool
    envs: frozenset[str]
    releases: frozenset[str]
    objects: frozenset[str]
    tuning_unit_sha256: str | None = None
    tuning_script_sha256: str | None = None
    governors: tuple[tuple[str, str], ...] = ()  # (policy, governor) pairs
    owns_root: bool = False  # the login user owns the device root: writing it needs no sudo
    lock_age_s: int | None = None
    docker: str = "not asked"  # ship: image only: "yes", "missing", or what the engine said
    images: frozenset[str] = frozenset()  # image IDs (sha256:...) in the device's engine
    zstd: bool = False  # the device has zstd (an image's tarball needs it; the packages' one is smaller with it)
    gnu_tar: bool = False  # tar takes -b/-B (busybox's does not)
    drift: ReleaseDrift = ReleaseDrift()  # the active release's files and the objects changed since verified


# what any deploy or rollback writes besides uploads (the lock, state.json and its backup, a
# symlink), with room to spare: below this nothing is written and the device is named
MIN_FREE_BYTES = 4 * 2**20


def check_room(target: Target, facts: Facts, what: str) -> None:
    """Refuse to `what` (a deploy, a rollback) when the device root's filesystem is (nearly) full."""
    if facts.free_bytes < MIN_FREE_BYTES:
        raise PlanError(f"{target.name}: {facts.free_bytes / 1e6:.1f} MB free under {target.settings.root}: "
                        f"too little to {what} (it writes the lock and state.json; needs "
                        f"{MIN_FREE_BYTES / 1e6:.0f} MB); free some space on the device")


def facts_command(target: Target) -> str:
    """Return one shell command that prints the device's facts for `parse_facts`."""
    return script(target, DEPLOY_FACTS)


def ask_facts(dev: Device) -> Facts:
    """Run `facts_command` on a `Device` (as the login user) and parse what it prints."""
    return parse_facts(dev.run(facts_command(dev.target), "gather facts", privileged=False).stdout)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def ask_kept_release(dev: Device, release_id: str) -> ReleaseDrift:
    """Ask RELEASE_DRIFT of releases/`release_id` (kept on the device, about to be switched to):
    file by file against its manifest, whatever the cheap signs say; read-only. Its
    `suspect_objects` are every object written to since verified, not only this release's."""
    if not _PLAIN_NAME.fullmatch(release_id):  # it goes into a double-quoted sh word
        raise ValueError(f"{release_id!r} is not a release name")
    kept = Fact(lambda target: release_check_lines(f"$root/releases/{release_id}", always=True),
                parse_release_drift)
    out = dev.run(script(dev.target, [kept]), f"check releases/{release_id}", privileged=False).stdout
    return kept.parse(read_values(out))


def parse_facts(output: str) -> Facts:
    """Parse the output of `facts_command` (FactError, naming what, on a shape it does not take)."""
    values = read_values(output)
    try:
        files = SYSTEM_FILES.parse(values)
        lock_owner, lock_age = LOCK.parse(values)
        docker, images = DOCKER.parse(values)
        return Facts(arch=ARCH.parse(values), python=PYTHON.parse(values), systemd=SYSTEMD.parse(values),
                     current=CURRENT.parse(values), committed=COMMITTED.parse(values), lock_owner=lock_owner,
                     free_bytes=FREE.parse(values), unit_sha256=files["unit_sha"],
                     service_active=ACTIVE.parse(values), user_exists=USER.parse(values), envs=ENVS.parse(values),
                     releases=RELEASES.parse(values), objects=OBJECTS.parse(values),
                     tuning_unit_sha256=files["tuning_unit_sha"], tuning_script_sha256=files["tuning_script_sha"],
                     governors=GOVERNORS.parse(values), owns_root=OWNS_ROOT.parse(values), lock_age_s=lock_age,
                     docker=docker, images=images, zstd=ZSTD.parse(values), gnu_tar=GNU_TAR.parse(values),
                     drift=RELEASE_DRIFT.parse(values))
    except FactError as exc:
        raise FactError(f"{exc}: {output[:300]!r}") from None
