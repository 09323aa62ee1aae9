"""The OpenSSH client's settings: which `ssh`, the private control-socket directory, how long a
master persists, the ciphers, and the client config every hop to a device reads (`ssh -F`)."""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .base import OpenSSHError

__all__ = ["openssh_client", "persist_seconds", "control_dir", "preferred_ciphers", "client_config",
           "DEFAULT_PERSIST_S", "KEY_CHARS"]

DEFAULT_PERSIST_S = 120
KEY_CHARS = 16  # a control socket's name: part of the sha256 of how the device is reached
_MAX_SOCKET_PATH = 107 - 17


def openssh_client() -> str | None:
    """Return the `ssh` client to use, or None (none installed, or EDGEFLEET_SSH_TRANSFER=paramiko)."""
    if os.environ.get("EDGEFLEET_SSH_TRANSFER", "").lower() == "paramiko":
        return None
    return _which_ssh(os.environ.get("PATH"))


@functools.lru_cache(maxsize=4)
def _which_ssh(search_path: str | None) -> str | None:
    # once per PATH and process: a rollout connects to every device, each in its own thread
    return shutil.which("ssh", path=search_path)


def persist_seconds() -> int:
    """Return how long an idle master outlives its last use (EDGEFLEET_SSH_PERSIST; 0: no masters)."""
    raw = os.environ.get("EDGEFLEET_SSH_PERSIST", "")
    if not raw:
        return DEFAULT_PERSIST_S
    if not raw.isdigit():
        raise OpenSSHError(f"EDGEFLEET_SSH_PERSIST={raw!r}: expected a whole number of seconds (0 turns masters off)")
    return int(raw)


def control_dir() -> Path:
    """Return the private directory for control sockets (made 0700; refused if anyone else could use it)."""
    where = (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir())
    if not _control_dir(*where).is_dir():  # removed since: make it again
        _control_dir.cache_clear()
    return _control_dir(*where)


@functools.lru_cache(maxsize=4)
def _control_dir(runtime_dir: str | None, tmp: str) -> Path:
    # checked once per place and process (every connection of a rollout asks)
    # a socket's path must fit sun_path (108 bytes) with the ".<16 random>" OpenSSH adds while binding
    bases = [b for b in (runtime_dir, tmp, "/tmp") if b]
    path = next(p for p in (Path(b) / f"edgefleet-ssh-{os.getuid()}" for b in bases)
                if len(str(p)) + 1 + KEY_CHARS <= _MAX_SOCKET_PATH or str(p.parent) == "/tmp")
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OpenSSHError(f"{path}: the SSH control socket directory must be a directory owned by uid "
                           f"{os.getuid()} with mode 0700 (a socket there runs commands on devices)")
    return path


def preferred_ciphers() -> str:
    """Return the Ciphers value for every hop ("" leaves OpenSSH's order): AES-GCM first when this
    host's CPU has AES instructions, else OpenSSH's own order (chacha20-poly1305 first).

    A deploy is mostly bulk bytes: with AES instructions AES-GCM costs the client and sshd about
    a third less CPU per byte than chacha20-poly1305 (measured on this host), and the boards
    edgefleet has profiles for (Cortex-A76/A78AE: Pi 5, RK3588, Jetson Orin) have them too. A
    board without them (a Raspberry Pi 4) decrypts chacha20 faster: set `Ciphers` for it in
    ~/.ssh/config, which wins, or EDGEFLEET_SSH_CIPHERS ("" for OpenSSH's order, or a value).
    """
    given = os.environ.get("EDGEFLEET_SSH_CIPHERS")
    if given is not None:
        if given and not re.fullmatch(r"[+^-]?[A-Za-z0-9@._-]+(,[A-Za-z0-9@._-]+)*", given):
            raise OpenSSHError(f"EDGEFLEET_SSH_CIPHERS={given!r}: expected a comma-separated cipher list "
                               "(as in ssh_config's Ciphers) or empty")
        return given
    return "^aes128-gcm@openssh.com,aes256-gcm@openssh.com" if _cpu_has_aes() else ""


@functools.lru_cache(maxsize=1)
def _cpu_has_aes() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    # x86 "flags : ... aes ...", arm64 "Features : ... aes ..."
    fields = (line.partition(":") for line in info.splitlines())
    return any(key.strip() in ("flags", "Features") and "aes" in value.split() for key, _, value in fields)


def _user_config() -> Path:
    """Return ~/.ssh/config from $HOME, as Fabric reads it (OpenSSH alone would read the passwd home)."""
    home = os.environ.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = "/"
    return Path(home) / ".ssh" / "config"


def client_config(known_hosts: Path | None) -> Path:
    """Write (once) and return the client config every hop to a device reads (`ssh -F`).

    OpenSSH hands `-F` on to the clients it starts for ProxyJump hosts, but not `-o`; so the
    trust settings live here, first (the first value obtained wins), then the user's own
    ~/.ssh/config and the system's: a jump host's key is verified as strictly as the device's.
    """
    lines = ["# written by edgefleet: every hop to a device verifies its host key and never prompts",
             "Host *", "  StrictHostKeyChecking yes", "  BatchMode yes", "  LogLevel ERROR"]
    if known_hosts is not None:
        lines += [f"  UserKnownHostsFile {_config_path(known_hosts)}", "  GlobalKnownHostsFile /dev/null"]
    user = _user_config()
    lines += [f"  Include {_config_path(user)}" if user.is_file() else "", "  Include /etc/ssh/ssh_config"]
    ciphers = preferred_ciphers()
    if ciphers:  # after the includes: a Ciphers line of the user's (for a host or all) wins
        lines += ["Host *", f"  Ciphers {ciphers}"]
    text = "\n".join(lines) + "\n"
    path = control_dir() / f"client-{hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]}.conf"
    if not path.is_file():  # many threads and processes may get here at once: each writes its own file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".client-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return path


def _config_path(path: Path) -> str:
    text = str(path.expanduser().absolute())
    if any(c in text for c in ' "\'\\\n'):
        raise OpenSSHError(f"{text}: a path with spaces or quotes cannot go into an ssh_config")
    return text
