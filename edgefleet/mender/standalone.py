"""Mender on a device, over SSH: bootstrap it for edgefleet's artifacts, and install one in standalone mode.

`bootstrap` is the once-per-device step a Mender-managed fleet needs before its first
deployment (an image recipe can do the same): the `edgefleet-release` update module, the
public key as `ArtifactVerifyKey`, the device type. `install` pushes an artifact and runs the
client's own standalone commands, `mender install` then `mender commit`: what a device without
a server does, and how the lab tests the real client.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from shlex import quote

from ..deploy.device import DeployError, Device
from ..inventory import Target
from ..transport import connect
from .artifact import device_type
from .device import MODULE_NAME, module_source

__all__ = ["bootstrap", "install", "InstallResult", "MODULES_DIR", "VERIFY_KEY_PATH", "MENDER_CONF"]

MODULES_DIR = "/usr/share/mender/modules/v3"
MENDER_CONF = "/etc/mender/mender.conf"
VERIFY_KEY_PATH = "/etc/mender/edgefleet-artifact-verify.pem"
DEVICE_TYPE_FILE = "/var/lib/mender/device_type"
ARTIFACT_INFO = "/etc/mender/artifact_info"  # read by the client until its first install
UPLOAD_DIR = ".edgefleet-mender"  # in the login user's home, 0700: never a shared directory


def _write(dev: Device, dest: str, text: str, mode: str, step: str) -> None:
    """Write `text` to `dest` as root: a new file beside it, then a rename."""
    new = dest + ".edgefleet-new"
    dev.run(f"mkdir -p {quote(posixpath.dirname(dest))} && rm -f {quote(new)} && cat > {quote(new)} && "
            f"chmod {mode} {quote(new)} && mv -f {quote(new)} {quote(dest)}", step, text=text)


def _merged_conf(current: str, key_path: str) -> str:
    """Return mender.conf with ArtifactVerifyKey set, every other key kept (a broken file is replaced)."""
    try:
        conf = json.loads(current) if current.strip() else {}
    except ValueError:
        conf = {}
    if not isinstance(conf, dict):
        conf = {}
    conf["ArtifactVerifyKey"] = key_path
    return json.dumps(conf, indent=2, sort_keys=True) + "\n"


def bootstrap(target: Target, public_key: Path, log=print) -> None:
    """Make `target` ready for edgefleet artifacts: update module, verify key, device type."""
    if not public_key.is_file():
        raise DeployError(f"{public_key}: no public key (make the pair with: invoke mender.keygen)")
    conn = connect(target)
    try:
        dev = Device(conn, target)
        found = dev.run("command -v mender || true", "look for mender-client", privileged=False).stdout.strip()
        if not found:
            raise DeployError(f"{target.name}: mender-client is not installed (Debian: apt-get install mender-client)")
        _write(dev, posixpath.join(MODULES_DIR, MODULE_NAME), module_source(), "0755", "install the update module")
        _write(dev, VERIFY_KEY_PATH, public_key.read_text(), "0644", "install the artifact verify key")
        conf = dev.run(f"cat {MENDER_CONF} 2>/dev/null || true", "read mender.conf").stdout
        _write(dev, MENDER_CONF, _merged_conf(conf, VERIFY_KEY_PATH), "0600", "set ArtifactVerifyKey")
        dtype = device_type(target)
        dev.run(f'mkdir -p "$(readlink -f {posixpath.dirname(DEVICE_TYPE_FILE)})"', "make the client's data dir")
        _write(dev, DEVICE_TYPE_FILE, f"device_type={dtype}\n", "0644", "write the device type")
        dev.run(f"[ -e {ARTIFACT_INFO} ] || echo artifact_name=edgefleet-bootstrap > {ARTIFACT_INFO}",
                "write artifact_info")
        log(f"{target.name}: {MODULE_NAME} module, verify key {VERIFY_KEY_PATH}, device_type={dtype}")
    finally:
        conn.close()


@dataclass
class InstallResult:
    """Where the device is after `install`: what the client said and did, and what it runs now."""

    target: str
    artifact: str
    installed: bool  # `mender install` accepted and ran ArtifactInstall
    committed: bool
    rolled_back: bool
    active_artifact: str  # `mender show-artifact` afterwards
    install_s: float
    commit_s: float
    detail: str  # the client's last lines when it refused or rolled back

    @property
    def ok(self) -> bool:
        return self.installed and self.committed

    def as_dict(self) -> dict:
        return asdict(self)


def _tail(res) -> str:
    """Return what the client said that matters: its errors and the module's own lines, not its chatter."""
    lines = (res.stdout + "\n" + res.stderr).strip().splitlines()
    kept = [line for line in lines
            if MODULE_NAME in line or ("level=info" not in line and "level=warning" not in line)]
    return "\n".join(kept[-16:])


def install(target: Target, artifact: Path, commit: bool = True, log=print) -> InstallResult:
    """Push `artifact` and run `mender install`, then (`commit`) `mender commit`; the client rolls back when
    the commit (the health gate) fails. A refused artifact writes nothing under the device root."""
    conn = connect(target)
    try:
        dev = Device(conn, target)
        remote = f"{UPLOAD_DIR}/{artifact.name}"
        dev.run(f"mkdir -p -m 0700 {UPLOAD_DIR}", "make the upload dir", privileged=False)
        conn.put(artifact, remote)
        try:
            t0 = time.monotonic()
            res = dev.run(dev.system_command(["mender", "--no-syslog", "install", remote]), "mender install",
                          privileged=False, warn=True)
            install_s = time.monotonic() - t0
            installed, detail, committed, rolled_back, commit_s = res.exited == 0, _tail(res), False, False, 0.0
            log(f"{target.name}: mender install {artifact.name}: "
                f"{'installed' if installed else 'refused'} in {install_s:.1f} s")
            if installed and commit:
                t0 = time.monotonic()
                res = dev.run(dev.system_command(["mender", "--no-syslog", "commit"]), "mender commit",
                              privileged=False, warn=True)
                commit_s = time.monotonic() - t0
                committed = res.exited == 0
                rolled_back = not committed and "Rolling back" in res.stdout + res.stderr
                detail = "" if committed else _tail(res)
                log(f"{target.name}: mender commit: {'committed' if committed else 'FAILED'} in {commit_s:.1f} s"
                    + (", rolled back" if rolled_back else ""))
        finally:
            dev.run(f"rm -f {quote(remote)}", "remove the uploaded artifact", privileged=False, warn=True)
        shown = dev.run(dev.system_command(["mender", "--no-syslog", "show-artifact"]), "mender show-artifact",
                        privileged=False, warn=True).stdout.strip().splitlines()
        return InstallResult(target.name, artifact.name, installed, committed, rolled_back,
                             shown[-1] if shown else "", install_s, commit_s, detail)
    finally:
        conn.close()
