"""One deploy per device: `<root>/.lock`, an atomic mkdir on the device with an owner line.

The lock lives on the device, so it outlives a controller that dies (SIGKILL, power, a lost
link). The stale-lock rule decides when it may be broken: its owner is provably gone (same
controller host, and that host rebooted since, or the process is no longer there, or its pid
now belongs to another process), or the lock is older than `deploy.lock_ttl_s` (age measured
by the device's own clock). An owner on another host is only ever judged by age.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from shlex import quote

from ..inventory import Target
from .facts import LOCK, Facts, read_values

__all__ = ["controller_identity", "owner_line", "parse_owner", "stale_reason", "process_start", "device_lock",
           "without_stale_lock"]



def process_start(pid: int) -> str | None:
    """Return the start time (clock ticks since boot) of process `pid` on this host, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after "pid (comm)"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def controller_identity() -> dict[str, str]:
    """Return who this controller is: host, pid, the pid's start time and the host's boot id."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "start": process_start(pid) or "", "boot": _boot_id()}


def owner_line(identity: dict[str, str], when: str) -> str:
    """Return the one-line owner record (key=value words) written into the lock."""
    return " ".join(f"{k}={identity[k]}" for k in ("host", "pid", "start", "boot") if identity.get(k)) + f" time={when}"


def parse_owner(text: str | None) -> dict[str, str]:
    """Parse an owner line; an unknown format gives {} (then only the lock's age can break it)."""
    pairs = [w.partition("=") for w in (text or "").split()]
    return {k: v for k, sep, v in pairs if sep}


def stale_reason(owner: str | None, age_s: int | None, ttl_s: float, me: dict[str, str],
                 start_of: Callable[[int], str | None] = process_start) -> str | None:
    """Return why a lock held by `owner` may be broken, or None while its owner may still run."""
    if age_s is not None and age_s > ttl_s:
        return f"it is {age_s} s old, over the {ttl_s:.0f} s limit (deploy.lock_ttl_s)"
    o = parse_owner(owner)
    if not o.get("host") or o["host"] != me.get("host"):
        return None
    if o.get("boot") and me.get("boot") and o["boot"] != me["boot"]:
        return f"its controller host {o['host']} has rebooted since"
    pid = o.get("pid", "")
    if not pid.isdigit():
        return None
    start = start_of(int(pid))
    if start is None:
        return f"its controller (pid {pid} on {o['host']}) is gone"
    if o.get("start") and start != o["start"]:
        return f"its controller (pid {pid} on {o['host']}) is gone; the pid now belongs to another process"
    return None


_HELD = 10  # the lock command's exit status when another deploy holds the lock


class device_lock:
    """Hold the device's deploy lock for a `with` block; break a stale one (saying so) first."""

    def __init__(self, dev, log=print, when: str = "", reconnect: Callable[[], object] | None = None):
        """`reconnect()` opens a fresh connection: the lock is released through it when the link died."""
        self.dev, self.log, self.reconnect = dev, log, reconnect
        self.me = controller_identity()
        self.owner = owner_line(self.me, when)
        self.path = dev.path(".lock")

    def _take(self) -> bool:
        """Take the lock: True, or False when another holds it; raise when it cannot be written.

        The lock appears with its owner line or not at all: the owner is written into a new
        directory of our own, which is then renamed to `.lock` (a rename onto a lock that
        exists fails). A full disk fails the write, before anything is called a lock.
        """
        lock, new = quote(self.path), quote(f"{self.path}.new")
        res = self.dev.run(
            f"mkdir -p {quote(self.dev.root)} || exit 3\n"
            f"[ -e {lock} ] && exit {_HELD}\n"
            f't={new}.$$; rm -rf "$t" && mkdir "$t" && printf \'%s\\n\' {quote(self.owner)} > "$t/owner" && '
            f'[ -s "$t/owner" ] && mv -T "$t" {lock} 2>/dev/null && exit 0\n'
            f'rc=$?; rm -rf "$t"; [ -e {lock} ] && exit {_HELD}; exit $rc',
            "take the deploy lock", warn=True)
        if res.exited in (0, _HELD):
            return res.exited == 0
        from .device import DeployError
        raise DeployError(f"{self.dev.target.name}: take the deploy lock failed (exit {res.exited}): "
                          f"{(res.stderr or res.stdout).strip()[-300:] or 'could not write its owner line'}")

    def held_by(self) -> tuple[str | None, int | None]:
        """Return the lock's owner line and age (s), or (None, None) when there is no lock."""
        res = self.dev.run("root=" + quote(self.dev.root) + "\n" + "\n".join(LOCK.lines(self.dev.target)),
                           "read the deploy lock", privileged=False, warn=True)
        return LOCK.parse(read_values(res.stdout))

    def break_if_stale(self, owner: str | None, age: int | None) -> bool:
        """Break the lock if the stale-lock rule allows it (only if its owner line is unchanged)."""
        reason = stale_reason(owner, age, self.dev.target.settings.deploy.lock_ttl_s, self.me)
        if owner is None or reason is None:
            return False
        self.log(f"  breaking a stale deploy lock ({owner}): {reason}")
        lock = quote(self.path)
        same = "" if owner == "unknown" else f'[ "$(cat {lock}/owner 2>/dev/null)" = {quote(owner)} ] && '
        res = self.dev.run(f"{same}mv -T {lock} {lock}.stale.$$ && rm -rf {lock}.stale.$$", "break a stale lock",
                           warn=True)
        return res.exited == 0

    def __enter__(self):
        if self._take():
            return self
        owner, age = self.held_by()
        if self.break_if_stale(owner, age) and self._take():
            return self
        owner, age = self.held_by()
        from .device import DeployError
        raise DeployError(f"{self.dev.target.name}: another deploy holds {self.path} ({owner or 'no owner'}, "
                          f"{age if age is not None else '?'} s old); if none is running, remove it on the "
                          f"device: rm -r {self.path}")

    def __exit__(self, *exc):
        lock = quote(self.path)
        release = f'[ "$(cat {lock}/owner 2>/dev/null)" = {quote(self.owner)} ] && rm -rf {lock}'
        try:
            self.dev.run(release, "release the deploy lock", warn=True)
        except Exception as first:  # the link died mid-deploy: try again on a new one, for a while
            if self.reconnect is None:
                raise
            for wait in (0, 1, 2, 4, 8):
                time.sleep(wait)
                try:
                    conn = self.reconnect()
                except Exception:
                    continue
                try:
                    dataclasses.replace(self.dev, transport=conn).run(release, "release the deploy lock", warn=True)
                    return False
                except Exception:
                    continue
                finally:
                    conn.close()
            self.log(f"  could not release {self.path} ({first}); the next deploy breaks it once this "
                     f"controller (pid {self.me['pid']}) has exited")
        return False


def without_stale_lock(target: Target, facts: Facts, log) -> Facts:
    """Let the plan go ahead when the lock on the device is stale (device_lock breaks it, saying so)."""
    if facts.lock_owner and stale_reason(facts.lock_owner, facts.lock_age_s, target.settings.deploy.lock_ttl_s,
                                         controller_identity()):
        return dataclasses.replace(facts, lock_owner=None)
    return facts
