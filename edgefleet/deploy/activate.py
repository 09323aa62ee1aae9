"""Activate a planned release on the device: move verified objects in, unpack the packages,
build the release, the service user, units and tuning, then switch `current` and restart, in
as few sessions as possible (each costs the device a fork and an exec).
"""

from __future__ import annotations

import json
import posixpath
import time
from shlex import quote

from ..device_env import PYC_MARK
from ..render import GPU_GROUPS, TUNING_SCRIPT_PATH, TUNING_UNIT, UNIT_NAME, engine_cache_dir, gpu_groups_argv, uses_gpu
from .converge import COPIED_FILES, STAMP, repair_command
from .device import DeployError, Device, docker_argv, root_steps
from .plan import DeployPlan
from .release import Release, ReleaseFile
from .remote import source
from .transfer import upload_objects

__all__ = ["apply_plan", "load_image", "switch_current", "restart_service", "IMAGE_ENV"]

IMAGE_ENV = "image.env"  # in an image release: EDGEFLEET_IMAGE and EDGEFLEET_RELEASE for the unit


def _build_spec(dev: Device, release: Release) -> dict:
    """Return what `build` (BUILDER, RECEIVER) needs to build a venv release on the device."""
    return {"tmp": dev.path("releases", f"{release.release_id}.tmp"), "final": dev.path("releases", release.release_id),
            "objects": dev.path("objects"), "site": dev.path("envs", release.packages.sha256),
            "links": [[f.sha256, f.path] for f in (*release.files, *release.compiled, release.manifest)],
            "copies": list(COPIED_FILES), "compile": not release.compiled}


def _build_release_script(dev: Device, release: Release) -> str:
    if release.env is not None:
        return f"python3 -c {quote(source('builder'))} {quote(json.dumps(_build_spec(dev, release)))}"
    objects = dev.path("objects")
    tmp = dev.path("releases", f"{release.release_id}.tmp")
    final = dev.path("releases", release.release_id)
    lines = [f"rm -rf {quote(tmp)}", f"mkdir -p {quote(tmp)}"]
    dirs = sorted({posixpath.dirname(f.path) for f in release.files if posixpath.dirname(f.path)})
    if dirs:
        lines.append("cd " + quote(tmp) + " && mkdir -p " + " ".join(quote(d) for d in dirs))
    for f in (*release.files, release.manifest):
        obj, dest = quote(posixpath.join(objects, f.sha256)), quote(posixpath.join(tmp, f.path))
        if f.path in COPIED_FILES:  # meant to be edited: a copy with the verified mark (deploy/converge.py)
            lines.append(f"cp {obj} {dest} && chmod 0644 {dest} && TZ=UTC0 touch -t 197001010000.00 {dest}")
        else:
            lines.append(f"ln -f {obj} {dest}")
    # what the unit's EnvironmentFile reads: the image to run and where its bundle is
    lines.append(f"printf 'EDGEFLEET_IMAGE=%s\\nEDGEFLEET_RELEASE=%s\\n' {quote(release.runtime_image.image_id)} "
                 f"{quote(release.release_id)} > {quote(posixpath.join(tmp, IMAGE_ENV))}")
    # the verified mark on its directories (deploy/converge.py), then into place
    lines.append(f"chmod -R a+rX {quote(tmp)} && find {quote(tmp)} -type d -exec touch -r "
                 f"{quote(posixpath.join(objects, STAMP))} {{}} + && mv -T {quote(tmp)} {quote(final)} && "
                 f"touch -r {quote(posixpath.join(objects, STAMP))} {quote(final)}")
    return " && ".join(lines)


def _install_env_script(dev: Device, release: Release, tarball: ReleaseFile, big_records: bool = False) -> str:
    """Unpack the verified packages' tarball (gzip or zstd) into envs/<sha256>/, then drop the tarball.

    `big_records`: GNU tar reads the pipe in 1 MiB records instead of 10 KiB: fewer reads, a
    faster unpack (benchmarks/RESULTS.md).
    """
    env_dir = dev.path("envs", release.packages.sha256)
    tmp = env_dir + ".tmp"
    obj = dev.path("objects", tarball.sha256)
    records = "-b 2048 -B " if big_records else ""
    if tarball.path.endswith(".zst"):  # no pipefail in every sh: a failed zstd leaves a mark
        unpack = (f"{{ zstd -dcq {quote(obj)} || touch {quote(tmp + '.failed')}; }} "
                  f"| tar {records}-xf - -C {quote(tmp)} "
                  f"&& [ ! -e {quote(tmp + '.failed')} ]")
    else:
        unpack = f"tar {records}-xzf {quote(obj)} -C {quote(tmp)}"
    return " && ".join([
        f"rm -rf {quote(tmp)} {quote(tmp + '.failed')}",
        f"mkdir -p {quote(tmp)}",
        unpack,
        # compiled on the host already (the mark), or here; a missing .pyc only costs start-up
        # time, so a file compileall rejects is not fatal
        f"{{ [ -e {quote(posixpath.join(tmp, PYC_MARK))} ] || python3 -m compileall -q -j 0 -s {quote(tmp)} "
        f"-p {quote(env_dir)} {quote(tmp)} >/dev/null 2>&1 || true; }}",
        f"mv -T {quote(tmp)} {quote(env_dir)}",
        f"rm -f {quote(obj)}",  # unpacked: the tarball is not needed again (a new env comes as a new one)
    ])


def _switch_command(dev: Device, release_id: str) -> str:
    new = dev.path("current.new")
    link = posixpath.join("releases", release_id)
    return f"ln -sfn {quote(link)} {quote(new)} && mv -Tf {quote(new)} {quote(dev.path('current'))}"


def switch_current(dev: Device, release_id: str) -> None:
    """Point `current` at `release_id` atomically (rename of a symlink)."""
    dev.run(_switch_command(dev, release_id), f"switch current to {release_id}")


def _restart_steps() -> list[tuple[list[str], str, bool]]:
    # forget an earlier crash loop (systemd's start limit) first; enabling needs no reload of its
    # own (a replaced unit was reloaded after installing it, a new one is read when first named)
    return [(["systemctl", "reset-failed", UNIT_NAME], "reset the service's failed state", True),
            (["systemctl", "enable", "--quiet", "--no-reload", UNIT_NAME], "enable the service", False),
            (["systemctl", "restart", UNIT_NAME], "restart the service", False)]


def restart_service(dev: Device) -> None:
    """Enable and restart the service; forget an earlier crash loop (systemd's start limit) first."""
    dev.batch(root_steps(dev, _restart_steps()))


def apply_plan(dev: Device, plan: DeployPlan, release: Release, log) -> None:
    """Run every step of `plan` up to and including the restart (not the health gate).

    In few sessions (each costs the device a fork and an exec): the layout, the upload (whose
    receiver builds a venv release as well, where the login user writes the root), the image's
    load, then one batch: the file steps (move the verified objects in, unpack the packages,
    build the release), the root-only steps (service user, units, tuning), and last the switch
    with the restart. The batch stops at the first failing step and names it.
    """
    s = dev.target.settings
    # a venv release is built by the upload's receiver when the login user writes the root itself
    # (its incoming dir is inside objects/): one process and session fewer
    in_upload = plan.build_release and release.env is not None and not s.sudo
    move_in, built = upload_objects(dev, plan, log, verify_on_arrival=release.env is not None,
                                    build=_build_spec(dev, release) if in_upload else None)
    if built:
        log(f"  built releases/{release.release_id} ({len(release.files)} files, hard links into objects/) "
            f"as the upload arrived")
    done = []  # what the batch below did, said once it has run
    batch: list[tuple[str, str, bool]] = []
    if move_in:
        batch.append((dev.file_command(move_in), "move verified objects in", False))
    if plan.repair:  # the release's files put back from verified objects (moved in just above), before any switch
        files = [(p, sha) for p, sha, _ in plan.repair]
        batch.append((dev.file_command(repair_command(dev, files, dev.path("releases", plan.release_id))),
                      f"repair releases/{plan.release_id}", False))
        done.append(f"repaired {', '.join(p for p, _, _ in plan.repair)} from verified objects")
    if plan.load_image:  # the image loads from its verified tarball before the release is built
        if batch:
            dev.batch(batch)
            batch = []
        load_image(dev, release, log)
    if plan.install_env:  # a venv release only: an image release has no packages
        tarball = plan.env_tarball or release.env_tarball(zstd=False)
        batch.append((dev.file_command(_install_env_script(dev, release, tarball, plan.big_records)),
                      "unpack the Python packages", False))
        done.append(f"unpacked Python packages ({tarball.path}) into envs/{release.packages.sha256[:12]}")
    if plan.build_release and not built:
        batch.append((dev.file_command(_build_release_script(dev, release)), f"build releases/{release.release_id}",
                      False))
        done.append(f"built releases/{release.release_id} ({len(release.files)} files, hard links into objects/)")
    # the service user, the units and tuning (a daemon-reload only when replacing a unit)
    steps = []
    if plan.create_user:
        steps.append((["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/usr/sbin/nologin",
                       s.service_user], "create the service user", False))
        done.append(f"created service user {s.service_user}")
    if uses_gpu(s) and plan.install_unit:  # read at the service's start (initgroups), so before it
        steps.append((gpu_groups_argv(s.service_user), "let the service user open the GPU (groups "
                      f"{', '.join(GPU_GROUPS)} where they exist)", False))
    cache = engine_cache_dir(s)
    if cache and plan.restart:  # the runtime's TensorRT engines, outside releases (idempotent)
        steps.append((["install", "-d", "-m", "0755", "-o", s.service_user, "-g", s.service_user, cache],
                      "make the engine cache directory", False))
    if plan.install_unit:
        unit_obj = dev.path("objects", release.unit.sha256)
        steps.append((["install", "-m", "0644", unit_obj, "/etc/systemd/system/" + UNIT_NAME],
                      f"install {UNIT_NAME}", False))
        done.append(f"installed {UNIT_NAME}")
    if plan.install_tuning:
        steps += _tuning_install_steps(dev, release)
    if plan.reload_units:  # a daemon-reload costs systemd real CPU: only when an installed unit is replaced
        steps.append((["systemctl", "daemon-reload"], "reload systemd", False))
    if plan.install_tuning:
        steps += _tuning_start_steps()
    batch += root_steps(dev, steps)
    tuning_step = len(batch) - 1
    # the switch and the restart together: current never points at a release the service was not asked to run
    if plan.activate:
        batch.append((dev.file_command(_switch_command(dev, release.release_id)),
                      f"switch current to {release.release_id}", False))
        done.append(f"current -> releases/{release.release_id}")
    if plan.restart:
        batch += root_steps(dev, _restart_steps())
        done.append(f"restarted {UNIT_NAME}")
    t0 = time.monotonic()
    codes = dev.batch(batch) if batch else []
    for line in done:
        log(f"  {line}")
    if plan.install_tuning:
        _log_tuning(codes[tuning_step], log)
    if batch:
        log(f"  ({len(batch)} steps in one session, {time.monotonic() - t0:.1f} s)")


def load_image(dev: Device, release: Release, log) -> None:
    """Load the release's image from its verified tarball into docker, check the ID, drop the tarball.

    The tarball went through `sha256sum -c` on the way into objects/; the engine then names the
    image by the sha256 of its config, which must be the ID the release records, or nothing is
    activated. Docker 20.10 (Debian bookworm) does not take zstd itself: zstd unpacks in a pipe.
    """
    image = release.runtime_image
    tarball = dev.path("objects", image.sha256)
    t0 = time.monotonic()
    load = " ".join(quote(a) for a in docker_argv(dev.target, "load", "--quiet"))
    # pipefail is not in every sh: a failed unpack is caught by the ID check below
    res = dev.run(f"zstd -dc --long=27 {quote(tarball)} | {load}", "load the runtime image", privileged=False,
                  warn=True)
    listing = " ".join(quote(a) for a in docker_argv(dev.target, "image", "ls", "--quiet", "--no-trunc"))
    ids = set(dev.run(listing, "list images", privileged=False).stdout.split())
    if image.image_id not in ids:
        raise DeployError(f"{dev.target.name}: the runtime image did not load as {image.image_id} (docker said: "
                          f"{(res.stdout + res.stderr).strip()[-400:] or f'exit {res.exited}'}); nothing was activated")
    dev.run(f"rm -f {quote(tarball)}", "remove the loaded image's tarball")
    log(f"  loaded image {image.image_id[:19]} into docker in {time.monotonic() - t0:.1f} s (ID checked)")


def _tuning_install_steps(dev: Device, release: Release) -> list[tuple[list[str], str, bool]]:
    unit, script = release.tuning
    step = f"install {TUNING_UNIT}"
    return [(["install", "-D", "-m", "0755", dev.path("objects", script.sha256), TUNING_SCRIPT_PATH], step, False),
            (["install", "-m", "0644", dev.path("objects", unit.sha256), "/etc/systemd/system/" + TUNING_UNIT],
             step, False)]


def _tuning_start_steps() -> list[tuple[list[str], str, bool]]:
    # enable (no reload: done), then (re)start it: stop reverts, start applies; best effort
    return [(["systemctl", "enable", "--quiet", "--no-reload", TUNING_UNIT], f"enable {TUNING_UNIT}", False),
            (["systemctl", "restart", TUNING_UNIT], f"start {TUNING_UNIT}", True)]


def _log_tuning(code: int, log) -> None:
    if code == 0:
        log(f"  installed, enabled and started {TUNING_UNIT}")
    else:  # tuning is best effort: the runtime works untuned, and status reports the drift
        log(f"  warning: {TUNING_UNIT} failed to start (see journalctl -u {TUNING_UNIT}); continuing")
