"""Fault knobs for lab devices: stop, start or kill sshd, a small or full disk, and a device's state over SSH.

Knobs act inside the device's container (docker exec through edgefleet/engine.py, as root
with the container's CAP_SYS_ADMIN), never through the SSH link they may break. Knobs that
must strike mid-deploy ("when the upload has begun") run as a bounded transient systemd unit
on the device that watches the incoming directory and acts once. `device_state` reads what a
deploy left behind over SSH (edgefleet/ssh.py), as a test asserts it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass

from edgefleet import engine
from edgefleet.lab import plan

from ..errors import EdgefleetError

__all__ = ["FaultError", "KNOBS", "container_of", "sshd_stop", "sshd_start", "sshd_kill", "kill_sshd_during_upload",
           "settle",
           "small_disk", "restore_disk", "fill_disk", "fill_disk_during_upload", "free_after_fill_kb", "free_disk",
           "DeviceState",
           "device_state", "incoming_dir"]

FILLER = ".fault-filler"
WATCH_S = 120  # a watcher that never fires ends by itself


class FaultError(EdgefleetError, RuntimeError):
    """A knob could not be applied; the message names the device and the command."""


def container_of(device: str) -> str:
    """Return the container of lab device `device` (lab-NN) in this lab slot."""
    match = re.fullmatch(r"lab-(\d{2})", device)
    if not match:
        raise FaultError(f"{device!r} is not a lab device name (lab-NN)")
    return plan.container_name(int(match.group(1)))


def _sh(device: str, script: str, what: str) -> str:
    code, out = engine.exec_run(container_of(device), ["sh", "-c", script])
    if code != 0:
        raise FaultError(f"{device}: {what} failed (exit {code}): {out.strip()[-400:]}")
    return out


def incoming_dir(root: str = "/opt/edgefleet") -> str:
    """Return where a deploy (as root, without sudo) uploads before verifying: <root>/objects/.incoming."""
    return f"{root.rstrip('/')}/objects/.incoming"


def sshd_stop(device: str) -> None:
    """Stop sshd and end every SSH connection: the device is down for the controller (connections
    refused, and no connection kept from before, such as a controller's multiplexed master)."""
    _sh(device, "systemctl kill --kill-whom=all ssh.service 2>/dev/null; systemctl stop ssh.service ssh.socket "
                "2>/dev/null; ! systemctl is-active --quiet ssh.service", "stop sshd")


def sshd_start(device: str) -> None:
    """Start sshd again (and forget a failed state)."""
    _sh(device, "systemctl reset-failed ssh.service 2>/dev/null; systemctl start ssh.service", "start sshd")


def sshd_kill(device: str) -> None:
    """SIGKILL every sshd of the device (the listener and each connection's), then start it again."""
    _sh(device, "systemctl kill --signal=KILL --kill-whom=all ssh.service; sleep 0.5; "
                "systemctl reset-failed ssh.service 2>/dev/null; systemctl start ssh.service", "kill sshd")


def _watch(device: str, name: str, condition: str, action: str) -> None:
    """Run `action` once `condition` holds (polled every 20 ms), as a transient unit that ends within WATCH_S."""
    unit = f"edgefleet-fault-{name}"
    body = f"end=$(( $(date +%s) + {WATCH_S} )); until {condition}; do [ $(date +%s) -lt $end ] || exit 3; " \
           f"sleep 0.02; done; {action}"
    _sh(device, f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; "
                f"systemd-run --quiet --collect --unit={unit} sh -c {shlex.quote(body)}", f"start the {name} watcher")


def _upload_started(incoming: str, min_bytes: int) -> str:
    kib = max(min_bytes // 1024, 0)
    return f"[ -n \"$(find {shlex.quote(incoming)} -maxdepth 1 -type f -size +{kib}k 2>/dev/null)\" ]"


def _paused(action: str) -> str:
    """Run `action` with the device's upload writers stopped (SIGSTOP, then SIGCONT): the SFTP
    server (paramiko's path) and tar (the OpenSSH stream's).

    The watcher polls, and a fast upload (on loopback) can end between its poll and its
    action; with the writer stopped the action strikes mid-upload however loaded the machine is.
    The writer is found by its name: sshd makes its sessions non-dumpable, so without
    CAP_SYS_PTRACE (dropped in containers) their open files cannot be read from /proc.
    """
    writers = "w=$(grep -lx -e sftp-server -e tar /proc/[0-9]*/comm 2>/dev/null | cut -d/ -f3)"
    return f"{writers}; [ -z \"$w\" ] || kill -STOP $w; {action}; [ -z \"$w\" ] || kill -CONT $w 2>/dev/null; true"


def kill_sshd_during_upload(device: str, incoming: str, min_bytes: int = 1 << 20) -> None:
    """Kill sshd (as `sshd_kill`) once an upload into `incoming` holds more than `min_bytes`."""
    action = ("systemctl kill --signal=KILL --kill-whom=all ssh.service; sleep 0.5; "
              "systemctl reset-failed ssh.service; systemctl start ssh.service")
    _watch(device, "kill-sshd", _upload_started(incoming, min_bytes), _paused(action))


def settle(device: str, timeout_s: float = 120.0) -> None:
    """Wait until no watcher of this module is running on the device and sshd is active again."""
    script = (f"end=$(( $(date +%s) + {int(timeout_s)} )); "
              "while systemctl list-units --plain --no-legend --state=active,activating 'edgefleet-fault-*' "
              "| grep -q . || ! systemctl is-active --quiet ssh.service; do "
              "[ $(date +%s) -lt $end ] || exit 3; sleep 0.2; done")
    _sh(device, script, "wait for the fault watchers and sshd")


def small_disk(device: str, path: str, mb: int) -> None:
    """Mount an empty `mb` MiB tmpfs over `path`: a fresh, small filesystem (what was there is hidden, kept)."""
    mount_point = shlex.quote(path)
    _sh(device, f"mkdir -p {mount_point} && mount -t tmpfs -o size={int(mb)}m,mode=0755 edgefleet-fault {mount_point}",
        "mount a small filesystem")


def restore_disk(device: str, path: str) -> None:
    """Unmount the small filesystem from `path` (lazily, if a process still uses it): the old content is back."""
    mount_point = shlex.quote(path)
    _sh(device, f'if [ "$(findmnt -n -M {mount_point} -o SOURCE)" = edgefleet-fault ]; then umount {mount_point} || '
                f"umount -l {mount_point}; fi", "unmount the small filesystem")


FILLED = "/run/edgefleet-fault-filled"  # kB free right after a fill during an upload


def _fill_to(path: str, leave_kb: int) -> str:
    avail = f"$(df -Pk {shlex.quote(path)} | awk 'NR==2 {{print $4}}')"
    filler = f"{shlex.quote(path)}/{FILLER}"
    script = (f"rm -f {filler}; n=$(( {avail} - {int(leave_kb)} )); "
              f"[ $n -le 0 ] || fallocate -l $(( n * 1024 )) {filler}")
    if leave_kb <= 0:  # someone else is writing: top up until the filesystem refuses (ENOSPC)
        script += f"; cat /dev/zero >> {filler} 2>/dev/null; echo {avail} > {FILLED}"
    return script


def fill_disk(device: str, path: str, leave_mb: float = 1.0) -> None:
    """Fill the filesystem under `path` until only `leave_mb` MiB stay free."""
    _sh(device, _fill_to(path, int(leave_mb * 1024)), "fill the disk")


def fill_disk_during_upload(device: str, path: str, incoming: str, min_bytes: int = 1 << 20) -> None:
    """Fill the filesystem under `path` completely once an upload into `incoming` holds more than `min_bytes`."""
    _watch(device, "fill-disk", _upload_started(incoming, min_bytes), _paused(_fill_to(path, 0)))


def free_after_fill_kb(device: str) -> int:
    """Return the kB that were free right after `fill_disk_during_upload` struck (-1: it has not)."""
    out = _sh(device, f"cat {FILLED} 2>/dev/null || echo -1", "read the fill result").strip()
    return int(out) if out.lstrip("-").isdigit() else -1


def free_disk(device: str, path: str) -> None:
    """Remove the filler file."""
    _sh(device, f"rm -f {shlex.quote(path)}/{FILLER} {FILLED}", "free the disk")


# what `invoke lab.fault` offers: name -> (function, the arguments it takes besides the device)
KNOBS = {
    "sshd-stop": (sshd_stop, ()), "sshd-start": (sshd_start, ()), "sshd-kill": (sshd_kill, ()),
    "disk-small": (small_disk, ("path", "mb")), "disk-restore": (restore_disk, ("path",)),
    "disk-fill": (fill_disk, ("path", "leave_mb")), "disk-free": (free_disk, ("path",)),
    # armed now, strike once the next deploy's upload into <path>/objects/.incoming passes 1 MiB
    "sshd-kill-on-upload": (lambda device, path: kill_sshd_during_upload(device, incoming_dir(path)), ("path",)),
    "disk-fill-on-upload": (lambda device, path: fill_disk_during_upload(device, path, incoming_dir(path)), ("path",)),
}


@dataclass(frozen=True)
class DeviceState:
    """What is on a device after a fault, read over SSH."""

    current: str | None  # the release `current` points at
    committed: str | None  # the last release that passed its gate (state.json)
    complete: bool  # `current` is a whole release: every manifest file there with its sha256
    service: str  # systemctl is-active of the runtime service
    lock: str | None  # the deploy lock's owner line, if a lock is there
    releases: tuple[str, ...]
    incoming: tuple[str, ...]  # files left in the upload dir
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


# runs on the device: checks the release `current` points at against its manifest
_STATE = r'''
import hashlib, json, os, subprocess, sys
root = sys.argv[1]
out = {"problems": []}
cur = os.path.join(root, "current")
out["current"] = os.path.basename(os.readlink(cur)) if os.path.islink(cur) else None
try:
    out["committed"] = json.load(open(os.path.join(root, "state.json"))).get("current")
except (OSError, ValueError):
    out["committed"] = None
complete = out["current"] is not None
if complete:
    try:
        manifest = json.load(open(os.path.join(cur, "manifest.json")))
        for rel, sha in manifest["files"].items():
            with open(os.path.join(cur, rel), "rb") as fh:
                if hashlib.sha256(fh.read()).hexdigest() != sha:
                    complete = False
                    out["problems"].append("sha256 mismatch: " + rel)
    except (OSError, ValueError, KeyError) as exc:
        complete = False
        out["problems"].append("%s: %s" % (type(exc).__name__, exc))
out["complete"] = complete
out["service"] = subprocess.run(["systemctl", "is-active", "edgefleet-runtime.service"],
                                capture_output=True, text=True).stdout.strip()
try:
    out["lock"] = open(os.path.join(root, ".lock", "owner")).read().strip() or "unknown"
except OSError:
    out["lock"] = "unknown" if os.path.exists(os.path.join(root, ".lock")) else None
def ls(p):
    try:
        return sorted(os.listdir(p))
    except OSError:
        return []
out["releases"] = ls(os.path.join(root, "releases"))
out["incoming"] = ls(os.path.join(root, "objects", ".incoming"))
print(json.dumps(out))
'''


def device_state(target) -> DeviceState:
    """Read a target's release, commit, completeness, service, lock and leftovers over SSH."""
    from edgefleet.transport import connect

    conn = connect(target)
    try:
        res = conn.run(shlex.join(["python3", "-c", _STATE, target.settings.root]), hide=True, warn=True,
                       in_stream=False)
    finally:
        conn.close()
    if res.exited != 0:
        raise FaultError(f"{target.name}: reading the device state failed: {res.stderr.strip()[-300:]}")
    d = json.loads(res.stdout)
    return DeviceState(d["current"], d["committed"], d["complete"], d["service"], d["lock"], tuple(d["releases"]),
                       tuple(d["incoming"]), tuple(d["problems"]))
