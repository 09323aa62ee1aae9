"""The `edgefleet-release` update module: mender-client runs it as `MODULE STATE FILES_DIR`.

ArtifactInstall lays the release out as an SSH deploy does (objects by sha256, the packages
unpacked once, `releases/<id>` as hard links, the unit and tuning, `current` switched, the
service restarted); ArtifactCommit runs the deploy's health gate on the device and fails when
it does, so the client calls ArtifactRollback, which switches back to the last release that
passed its gate and restarts it. `state.json` and `.lock` are the SSH deploy's: a device moves
between the two without losing its history. Messages go to stderr (the client's log).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

from edgefleet.deploy.prune import choose_releases, unreferenced, unused_caches  # host only
from edgefleet.deploy.remote.build import build  # host only
from edgefleet.mender.device.gate import health_gate  # host only

SPEC_NAME = "edgefleet-release.json"  # the artifact's instructions; every other file is named by its sha256
SPEC_FORMAT = 1
KEEP_HISTORY = 50


class ModuleError(Exception):
    """A step failed; the message names it (the client logs it and rolls back)."""


def say(text: str) -> None:
    sys.stderr.write(f"edgefleet-release: {text}\n")
    sys.stderr.flush()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_spec(files_dir: str) -> dict:
    """Return the artifact's spec after checking every payload file is its sha256 (nothing written yet)."""
    try:
        with open(os.path.join(files_dir, SPEC_NAME)) as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModuleError(f"{SPEC_NAME}: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ModuleError(f"{SPEC_NAME}: format {spec.get('format') if isinstance(spec, dict) else '?'}, "
                          f"this module reads {SPEC_FORMAT}")
    for name in sorted(os.listdir(files_dir)):
        if name != SPEC_NAME and sha256_of(os.path.join(files_dir, name)) != name:
            raise ModuleError(f"payload file {name}: its bytes are not its sha256; nothing was installed")
    return spec


def path(spec: dict, *parts: str) -> str:
    return os.path.join(spec["root"], *parts)


def run(argv: list[str], step: str, check: bool = True) -> int:
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and check:
        raise ModuleError(f"{step} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-400:]}")
    return res.returncode


# -- the deploy lock and state.json, as the SSH deploy keeps them --------------------------------

def take_lock(spec: dict, work: str) -> None:
    lock = path(spec, ".lock")
    owner = f"host=mender@{socket.gethostname()} pid={os.getpid()} time={now()}"
    try:
        os.mkdir(lock, 0o755)
    except FileExistsError:
        try:
            with open(os.path.join(lock, "owner")) as f:
                held = f.read().strip()
        except OSError:
            held = "unknown"
        raise ModuleError(f"another deploy holds {lock} ({held}); if none is running: rm -r {lock}") from None
    with open(os.path.join(lock, "owner"), "w") as f:
        f.write(owner + "\n")
    with open(os.path.join(work, "lock-owner"), "w") as f:
        f.write(owner + "\n")


def release_lock(spec: dict, work: str) -> None:
    """Remove the lock only if this update took it (its owner line is the one kept in `work`)."""
    lock = path(spec, ".lock")
    try:
        with open(os.path.join(work, "lock-owner")) as mine, open(os.path.join(lock, "owner")) as held:
            if mine.read() == held.read():
                shutil.rmtree(lock)
    except OSError:
        pass


def read_state(spec: dict) -> dict:
    try:
        with open(path(spec, "state.json")) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def record_state(spec: dict, entry: dict) -> None:
    """Append `entry` to state.json's history; "current" moves only to a release that passed its gate."""
    state = read_state(spec)
    history = (state.get("history") or [])[-(KEEP_HISTORY - 1):] + [entry]
    state = {"current": entry.get("active") if entry.get("healthy") else state.get("current"), "history": history}
    tmp = path(spec, ".state.json.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(fd, "w") as f:
        f.write(json.dumps(state, indent=2) + "\n")  # "current" on line 2: the deploy's facts read it there
    os.replace(tmp, path(spec, "state.json"))


# -- ArtifactInstall ---------------------------------------------------------------------------

def move_objects_in(spec: dict, files_dir: str) -> int:
    """Copy the payload's objects into objects/ (each verified already); return how many were new."""
    objects = path(spec, "objects")
    os.makedirs(objects, exist_ok=True)
    new = 0
    for name in sorted(os.listdir(files_dir)):
        final = os.path.join(objects, name)
        if name == SPEC_NAME or os.path.exists(final):
            continue
        if name == spec["env"]["sha256"] and os.path.isdir(path(spec, "envs", name)):
            continue  # unpacked already: the tarball is not kept
        part = os.path.join(objects, f".{name}.part")
        if os.path.lexists(part):
            os.unlink(part)
        shutil.copyfile(os.path.join(files_dir, name), part, follow_symlinks=False)
        os.chmod(part, 0o644)
        os.rename(part, final)
        new += 1
    return new


def install_env(spec: dict) -> bool:
    """Unpack the packages' tarball into envs/<sha256>/ once, then drop the tarball."""
    sha = spec["env"]["sha256"]
    env_dir = path(spec, "envs", sha)
    if os.path.isdir(env_dir):
        return False
    tmp, tarball = env_dir + ".tmp", path(spec, "objects", sha)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    run(["tar", "-xzf", tarball, "-C", tmp], "unpack the Python packages")
    if not os.path.exists(os.path.join(tmp, spec["env"]["pyc_mark"])):  # compiled on the host, else here
        run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", tmp, "-p", env_dir, tmp], "compile", False)
    os.rename(tmp, env_dir)
    os.unlink(tarball)
    return True


def build_release(spec: dict) -> bool:
    rid = spec["release_id"]
    final = path(spec, "releases", rid)
    if os.path.isdir(final):
        return False
    os.makedirs(path(spec, "releases"), exist_ok=True)
    build({"tmp": final + ".tmp", "final": final, "objects": path(spec, "objects"),
           "site": path(spec, "envs", spec["env"]["sha256"]), "links": spec["links"], "compile": spec["compile"]})
    return True


def install_file(source: str, dest: str, mode: int) -> bool:
    """Install `source` at `dest` unless it holds the same bytes already; return whether it changed."""
    if os.path.isfile(dest) and sha256_of(dest) == sha256_of(source):
        return False
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".edgefleet-new"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
    return True


def install_units(spec: dict) -> None:
    """The service user, the runtime unit and the tuning unit and script; daemon-reload when one changed."""
    user = spec["service_user"]
    if run(["id", "-u", user], "look up the service user", check=False) != 0:
        run(["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/usr/sbin/nologin", user],
            "create the service user")
    for group in spec.get("gpu_groups") or []:  # the GPU's device nodes (a group the system lacks is skipped)
        if run(["getent", "group", group], f"look up group {group}", check=False) == 0:
            run(["usermod", "-a", "-G", group, user], f"add the service user to {group}")
    cache = spec.get("engine_cache")
    if cache:  # the runtime's TensorRT engines, outside releases (the unit's one writable place)
        run(["install", "-d", "-m", "0755", "-o", user, "-g", user, cache], "make the engine cache directory")
    unit = spec["unit"]
    changed = install_file(path(spec, "objects", unit["sha256"]), "/etc/systemd/system/" + unit["name"], 0o644)
    tuning = spec.get("tuning")
    if tuning:
        changed |= install_file(path(spec, "objects", tuning["script_sha256"]), tuning["script_path"], 0o755)
        changed |= install_file(path(spec, "objects", tuning["unit_sha256"]), "/etc/systemd/system/" + tuning["name"],
                                0o644)
    if changed:
        run(["systemctl", "daemon-reload"], "reload systemd")
    if tuning:  # best effort, as in a deploy: the runtime works untuned and `status` reports the drift
        run(["systemctl", "enable", "--quiet", "--no-reload", tuning["name"]], "enable tuning", check=False)
        if run(["systemctl", "restart", tuning["name"]], "start tuning", check=False) != 0:
            say(f"warning: {tuning['name']} failed to start (see journalctl -u {tuning['name']}); continuing")


def switch_current(spec: dict, release_id: str) -> None:
    new = path(spec, "current.new")
    if os.path.lexists(new):
        os.unlink(new)
    os.symlink(os.path.join("releases", release_id), new)
    os.replace(new, path(spec, "current"))


def restart_service(spec: dict) -> None:
    name = spec["unit"]["name"]
    run(["systemctl", "reset-failed", name], "reset the service's failed state", check=False)
    run(["systemctl", "enable", "--quiet", "--no-reload", name], "enable the service")
    run(["systemctl", "restart", name], "restart the service")


def current_release(spec: dict) -> str | None:
    try:
        return os.path.basename(os.readlink(path(spec, "current")))
    except OSError:
        return None


def artifact_install(files_dir: str, work: str) -> None:
    spec = read_spec(files_dir)
    os.makedirs(spec["root"], exist_ok=True)
    os.makedirs(work, exist_ok=True)
    take_lock(spec, work)
    before = {"current": current_release(spec), "committed": read_state(spec).get("current")}
    with open(os.path.join(work, "install.json"), "w") as f:
        json.dump({**before, "spec": spec}, f)
    new = move_objects_in(spec, files_dir)
    unpacked = install_env(spec)
    built = build_release(spec)
    install_units(spec)
    switch_current(spec, spec["release_id"])
    restart_service(spec)
    say(f"{before['current'] or '(none)'} -> {spec['release_id']}: {new} new objects"
        f"{', packages unpacked' if unpacked else ''}{', release built' if built else ''}; service restarted")


# -- ArtifactCommit, ArtifactRollback, Cleanup ------------------------------------------------

def prune_releases(spec: dict) -> list[str]:
    """Keep the last `keep_releases` releases as a deploy's prune does (the deploy's own choice of what
    goes); return the deleted ones. A kept release whose manifest cannot be read keeps everything."""
    releases_dir, objects_dir, envs_dir = path(spec, "releases"), path(spec, "objects"), path(spec, "envs")
    kept, deleted = choose_releases(set(os.listdir(releases_dir)), read_state(spec).get("history") or [],
                                    spec["release_id"], spec["keep_releases"])
    manifests = {}
    for rid in kept:
        manifest = os.path.join(releases_dir, rid, "manifest.json")
        try:
            with open(manifest) as f:
                manifests[rid] = (sha256_of(manifest), json.load(f))
        except (OSError, ValueError):
            return []
    # only what is named by a sha256: a deploy's .incoming dir and a copy's .part files are not objects
    objects = {n for n in os.listdir(objects_dir) if len(n) == 64 and not n.strip("0123456789abcdef")}
    envs = {n for n in os.listdir(envs_dir) if not n.endswith(".tmp")} if os.path.isdir(envs_dir) else set()
    gone_objects, gone_envs = unreferenced(manifests, kept, objects, envs)
    for rid in deleted:
        shutil.rmtree(os.path.join(releases_dir, rid), ignore_errors=True)
    for name in gone_objects:
        os.unlink(os.path.join(objects_dir, name))
    for name in gone_envs:
        shutil.rmtree(os.path.join(envs_dir, name), ignore_errors=True)
    cache_dir = spec.get("engine_cache") or path(spec, "cache", "trt")
    for name in unused_caches(_engine_caches(cache_dir), manifests, kept):
        shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)
    return deleted


def _engine_caches(cache_dir: str) -> dict[str, dict | None]:
    """Return each engine cache directory's key.json (None when unreadable)."""
    caches: dict[str, dict | None] = {}
    names = os.listdir(cache_dir) if os.path.isdir(cache_dir) else []
    for name in names:
        try:
            with open(os.path.join(cache_dir, name, "key.json")) as f:
                key = json.load(f)
        except (OSError, ValueError):
            key = None
        caches[name] = key if isinstance(key, dict) else None
    return caches


def load_install(work: str) -> dict:
    try:
        with open(os.path.join(work, "install.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise ModuleError("no record of this update's ArtifactInstall in the module's work dir") from None


def artifact_commit(work: str) -> None:
    done = load_install(work)
    spec = done["spec"]
    t0 = time.monotonic()
    ok, reason, p95 = health_gate(spec["gate"], spec["unit"]["name"], path(spec, "releases", spec["release_id"]))
    with open(os.path.join(work, "gate.json"), "w") as f:
        json.dump({"ok": ok, "reason": reason}, f)
    if not ok:
        raise ModuleError(f"health gate failed for {spec['release_id']}: {reason}")
    record_state(spec, {"time": now(), "release": spec["release_id"], "previous": done["current"], "healthy": True,
                        "reason": "", "active": spec["release_id"], "p95_ms": p95, "via": "mender"})
    try:
        deleted = prune_releases(spec)
    except OSError as exc:  # committed already: pruning is housekeeping, never a reason to roll back
        deleted = []
        say(f"warning: pruning old releases failed ({exc}); the next commit or deploy tries again")
    say(f"{spec['release_id']} passed its health gate in {time.monotonic() - t0:.1f} s; committed"
        + (f"; pruned {', '.join(deleted)}" if deleted else ""))


def artifact_rollback(work: str) -> None:
    """Back to the last release that passed its gate (not merely the one that was current), restarted."""
    if not os.path.exists(os.path.join(work, "install.json")):
        say("ArtifactInstall changed nothing on this device: nothing to roll back")
        return
    done = load_install(work)
    spec = done["spec"]
    good = done["committed"] if done["committed"] and done["committed"] != spec["release_id"] else None
    if good and not os.path.isdir(path(spec, "releases", good)):
        good = None
    try:
        with open(os.path.join(work, "gate.json")) as f:
            reason = json.load(f).get("reason") or ""
    except (OSError, ValueError):
        reason = "the install failed"
    if good:
        switch_current(spec, good)
        restart_service(spec)
        say(f"rolled back to {good}")
    else:
        say("no earlier release passed its gate on this device: nothing to roll back to")
    record_state(spec, {"time": now(), "release": spec["release_id"], "previous": done["current"], "healthy": False,
                        "reason": reason[:300], "active": good or current_release(spec), "via": "mender"})


def cleanup(work: str) -> None:
    try:
        release_lock(load_install(work)["spec"], work)
    except ModuleError:
        pass  # the install never got as far as the lock


def main() -> None:
    state, files = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "."
    work = os.path.join(files, "tmp")
    try:
        if state == "SupportsRollback":
            print("Yes")
        elif state == "NeedsArtifactReboot":
            print("No")
        elif state == "ArtifactInstall":
            artifact_install(os.path.join(files, "files"), work)
        elif state == "ArtifactCommit":
            artifact_commit(work)
        elif state == "ArtifactRollback":
            artifact_rollback(work)
        elif state == "Cleanup":
            cleanup(work)
    except (ModuleError, OSError, KeyError, subprocess.SubprocessError) as exc:
        say(f"{state}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
