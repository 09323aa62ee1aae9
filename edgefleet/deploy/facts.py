"""What a deploy and `status` ask a device: each fact is its shell lines beside the parser that
reads them, and a deploy joins them into ONE remote script (one round trip a device).

The facts are read with the shell's builtins wherever they can be: every program started on a
board costs a fork and an exec (and far more under qemu-user).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from shlex import quote

from ..errors import EdgefleetError
from ..inventory import Target
from ..render import TUNING_SCRIPT_PATH, TUNING_UNIT, UNIT_NAME
from .device import Device, docker_argv

__all__ = ["Facts", "PlanError", "facts_command", "parse_facts", "ask_facts", "ARCH_NAMES", "COMMITTED_FACT",
           "GOVERNORS_FACT", "LOCK_FACTS", "MIN_FREE_BYTES", "check_room"]


ARCH_NAMES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "amd64", "amd64": "amd64"}


_OBJECTS_MARK = "--objects--"


# the release the last health gate passed for: line 2 of state.json (record_state writes it
# with indent 2, "current" first)
COMMITTED_FACT = ('c=; [ -r "$root/state.json" ] && { read -r _; read -r c; } < "$root/state.json"; '
                  'case "$c" in *\'"current": "r-\'*) c=${c#*\'"current": "\'}; c=${c%%\'"\'*} ;; *) c= ;; esac; '
                  'echo "committed=$c"')


# one line `governor:policyN=<governor>` per cpufreq policy (none without cpufreq)
GOVERNORS_FACT = ('for p in /sys/devices/system/cpu/cpufreq/policy*; do '
                  '[ -r "$p/scaling_governor" ] && read -r g < "$p/scaling_governor" && echo "governor:${p##*/}=$g"; '
                  'done')


# facts_command lines: the owner line, and the lock's age in seconds by the device's clock
LOCK_FACTS = [
    'if [ -e "$root/.lock" ]; then o=unknown; [ -r "$root/.lock/owner" ] && read -r o < "$root/.lock/owner"; '
    'echo "lock=${o:-unknown}"; echo "lock_age=$(( $(date +%s) - $(stat -c %Y "$root/.lock") ))"; fi',
]


_PYTHONS = ("3.13", "3.12", "3.11", "3.10", "3.9", "3.14", "3.8")  # tried after the inventory's own version


def _active_fact(unit: str) -> list[str]:
    """Return sh lines printing `active=<state>`: `active` when the unit's cgroup holds a process
    (read with builtins: cgroup v2, hybrid or v1, below whatever cgroup this session's systemd
    lives in, e.g. a container's), else what `systemctl is-active` says (a big program to start;
    most no-op re-runs never start it)."""
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


def _sha256_fact(files: dict[str, str]) -> str:
    """Return one line of sh printing `<key>=<sha256>` for each file that exists (one sha256sum for
    all; its output split into (hash, path) words by the shell, not read by a piped subshell)."""
    if any(not p or any(c.isspace() for c in p) for p in files.values()):
        raise ValueError(f"sha256 facts take paths without blanks: {sorted(files.values())}")
    cases = " ".join(f"{shlex.quote(path)}) echo {key}=$1 ;;" for key, path in files.items())
    return (f"h=$(sha256sum {' '.join(shlex.quote(p) for p in files.values())} 2>/dev/null); set -- $h; "
            f"while [ $# -ge 2 ]; do case $2 in {cases} esac; shift 2; done")


def _listing(key: str, directory: str) -> str:
    """Return sh printing `<key>=<names...>` of `directory`'s entries, with builtins only."""
    return (f'set -- "$root"/{directory}/*; n=; for f; do [ -e "$f" ] && n="$n ${{f##*/}}"; done; '
            f'echo "{key}=$n"')


class PlanError(EdgefleetError):
    """The device cannot take this release as it is (its facts say why), or did not say what it is."""


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


# what any deploy or rollback writes besides uploads (the lock, state.json and its backup, a
# symlink), with room to spare: below this nothing is written and the device is named
MIN_FREE_BYTES = 4 * 2**20


def check_room(target: Target, facts: Facts, what: str) -> None:
    """Refuse to `what` (a deploy, a rollback) when the device root's filesystem is (nearly) full."""
    if facts.free_bytes < MIN_FREE_BYTES:
        raise PlanError(f"{target.name}: {facts.free_bytes / 1e6:.1f} MB free under {target.settings.root}: "
                        f"too little to {what} (it writes the lock and state.json; needs "
                        f"{MIN_FREE_BYTES / 1e6:.0f} MB); free some space on the device")


def docker_facts(target: Target) -> list[str]:
    """Return the facts lines of an image target: is docker usable, which image IDs it has."""
    listing = " ".join(shlex.quote(a) for a in docker_argv(target, "image", "ls", "--quiet", "--no-trunc"))
    return [
        "if command -v docker >/dev/null 2>&1; then",
        f"  if ids=$({listing} 2>&1); then echo docker=yes; echo \"images=$(echo \"$ids\" | tr '\\n' ' ')\"",
        "  else echo \"docker=$(echo \"$ids\" | tail -n 2 | tr '\\n' ' ' | cut -c1-300)\"; fi",
        "else echo docker=missing; fi",
    ]


def facts_command(target: Target) -> str:
    """Return one shell command that prints the device's facts for `parse_facts`."""
    s = target.settings
    root, user = quote(s.root), quote(s.service_user)
    lines = [
        f"root={root}",
        "nl='\n'",
        # `on_path x` sets $w to x's path, like `command -v x` without the subshell a $(...) forks
        # (its own _-names: the script's $d and $o stay untouched whenever it is called)
        'on_path() { w=; _o=$IFS; IFS=:; for _d in $PATH; do [ -f "$_d/$1" ] && [ -x "$_d/$1" ] && w=$_d/$1 && '
        'break; done; IFS=$_o; }',
        # the arch the device's programs run as: bash's own (set when it was built, no uname
        # started), else uname's -- not /proc/sys/kernel/arch, which under qemu-user (the lab's
        # arm64 devices) is the host kernel's, as a 64-bit kernel's is under a 32-bit userland
        'echo "arch=${HOSTTYPE:-$(uname -m)}"',
        # python3 is the same file as python3.X (the expected version first): no Python start-up
        # (slow on a busy board) and no readlink; anything else is asked
        'v=; on_path python3; p=$w; [ -n "$p" ] && for x in ' + " ".join(dict.fromkeys([s.python, *_PYTHONS])) +
        '; do [ "$p" -ef "${p%/*}/python$x" ] && v=$x && break; done',
        "[ -n \"$v\" ] || v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null)",
        'echo "python=$v"',
        'if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi',
        # the release `current` leads to, by comparing files (test -ef), not with readlink: a link
        # to a release that is gone is no current release
        '[ -L "$root/current" ] && for r in "$root"/releases/*; do '
        '[ "$root/current" -ef "$r" ] && echo "current=${r##*/}" && break; done',
        COMMITTED_FACT,
        *LOCK_FACTS,
        'd="$root"; while [ ! -d "$d" ]; do d=${d%/*}; d=${d:-/}; done',
        # df's second line, fourth field (no piped subshell)
        'f=$(df -Pk "$d"); f=${f#*"$nl"}; set -- $f; echo "free_kb=$4"',
        _sha256_fact({"unit_sha": f"/etc/systemd/system/{UNIT_NAME}",
                      "tuning_unit_sha": f"/etc/systemd/system/{TUNING_UNIT}",
                      "tuning_script_sha": TUNING_SCRIPT_PATH}),
        *_active_fact(UNIT_NAME),
        # /etc/passwd with builtins (useradd --system writes it); a user only NSS knows: id
        f'u=no; while IFS=: read -r n _; do [ "$n" = {user} ] && u=yes && break; done < /etc/passwd; '
        f'[ $u = yes ] || {{ id -u {user} >/dev/null 2>&1 && u=yes; }}; echo "user=$u"',
        'if [ -d "$root" ] && [ -O "$root" ] && [ -w "$root" ]; then echo owns_root=yes; else echo owns_root=no; fi',
        _listing("envs", "envs"),
        _listing("releases", "releases"),
        GOVERNORS_FACT,
        *(docker_facts(target) if s.ship == "image" else []),
        'if command -v zstd >/dev/null 2>&1; then echo zstd=yes; else echo zstd=no; fi',
        # GNU tar (not busybox's): it reads a pipe in 1 MiB records (-b 2048 -B), a faster unpack
        'on_path busybox; b=${w:-/nonexistent}; on_path tar; [ -n "$w" ] && ! [ "$w" -ef "$b" ] && echo gnu_tar=yes',
        f'echo {_OBJECTS_MARK}',
        'for f in "$root"/objects/*; do [ -e "$f" ] && echo "${f##*/}"; done',
        "true",
    ]
    return "\n".join(lines)


def ask_facts(dev: Device) -> Facts:
    """Run `facts_command` on a `Device` (as the login user) and parse what it prints."""
    return parse_facts(dev.run(facts_command(dev.target), "gather facts", privileged=False).stdout)


def _whole(text: str) -> int | None:
    """Return `text` as a whole number (ASCII digits, a sign allowed), or None."""
    digits = text.removeprefix("-")
    return int(text) if digits.isascii() and digits.isdigit() else None


def parse_facts(output: str) -> Facts:
    """Parse the output of `facts_command`."""
    head, _, objects = output.partition(_OBJECTS_MARK)
    values: dict[str, str] = {}
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    missing = {"arch", "python", "systemd", "free_kb"} - values.keys()
    if missing or not objects and _OBJECTS_MARK not in output:
        what = ", ".join(sorted(missing)) or "objects"
        raise PlanError(f"device facts incomplete (missing {what}): {output[:300]!r}")
    free_kb = values["free_kb"]
    if not (free_kb.isascii() and free_kb.isdigit()):  # df's answer is device data: a whole number or nothing
        raise PlanError(f"device facts: free_kb={free_kb[:40]!r} is not a whole number of KiB (df -Pk)")
    return Facts(
        arch=ARCH_NAMES.get(values["arch"], values["arch"]),
        python=values["python"],
        systemd=values["systemd"] == "yes",
        current=values.get("current", "").rsplit("/", 1)[-1] or None,
        committed=values.get("committed") or None,
        lock_owner=values.get("lock") or None,
        free_bytes=int(free_kb) * 1024,
        unit_sha256=values.get("unit_sha") or None,
        service_active=values.get("active") or "unknown",
        user_exists=values.get("user") == "yes",
        envs=frozenset(values.get("envs", "").split()),
        releases=frozenset(values.get("releases", "").split()),
        objects=frozenset(n for n in objects.split() if len(n) == 64),
        tuning_unit_sha256=values.get("tuning_unit_sha") or None,
        tuning_script_sha256=values.get("tuning_script_sha") or None,
        governors=tuple(sorted((key.split(":", 1)[1], value) for key, value in values.items()
                               if key.startswith("governor:"))),
        owns_root=values.get("owns_root") == "yes",
        lock_age_s=_whole(values.get("lock_age", "")),
        docker=values.get("docker", "not asked"),
        images=frozenset(values.get("images", "").split()),
        zstd=values.get("zstd") == "yes",
        gnu_tar=values.get("gnu_tar") == "yes",
    )
