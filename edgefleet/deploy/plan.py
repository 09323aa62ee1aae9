"""Decide what a deploy must do: the device's facts and the release in, a plan out (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..inventory import Target
from ..render import TUNING_UNIT, UNIT_NAME
from .converge import ReleaseDrift, describe_drift
from .facts import Facts, PlanError
from .release import Release, ReleaseFile

__all__ = ["DeployPlan", "PlanError", "make_plan"]


@dataclass(frozen=True)
class DeployPlan:
    """The steps a deploy takes on one device; empty steps mean nothing changes."""

    target: str
    release_id: str
    previous: str | None
    upload: tuple[ReleaseFile, ...]
    install_env: bool
    build_release: bool
    install_unit: bool
    create_user: bool
    activate: bool
    restart: bool
    gate: bool
    notes: tuple[str, ...] = field(default_factory=tuple)
    install_tuning: bool = False
    env_tarball: ReleaseFile | None = None  # the packages' tarball to unpack (gzip, or zstd when the device has it)
    # systemd must re-read unit files only when one it may have loaded is replaced: a unit that
    # was never installed is read from disk when first named (tested on Debian bookworm's systemd 252)
    reload_units: bool = False
    big_records: bool = False  # unpack with tar -b 2048 -B (GNU tar)
    load_image: str | None = None  # ship: image: the image ID to load from its uploaded tarball
    # the active release's files to put back from their verified objects: (path, sha256, what happened)
    repair: tuple[tuple[str, str, str], ...] = ()
    corrupt: tuple[str, ...] = ()  # objects this release reuses whose bytes changed since verified: sent again

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.upload)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.upload or self.repair or self.load_image or self.install_env or self.build_release
                    or self.install_unit or self.install_tuning or self.create_user or self.activate or self.restart
                    or self.gate)

    def describe(self) -> list[str]:
        """Return the plan as lines a person reads."""
        if self.nothing_to_do:
            return [f"{self.target}: release {self.release_id} is already active and running; nothing to do"]
        same = self.previous == self.release_id
        steps = [f"{self.target}: {self.release_id} (active), converging" if same
                 else f"{self.target}: {self.previous or '(none)'} -> {self.release_id}"]
        steps += [f"  repair: {line}" for line in describe_drift(tuple((p, kind, s) for p, s, kind in self.repair))]
        if self.corrupt:
            steps.append(f"  repair: {len(self.corrupt)} object(s) no longer match their sha256 "
                         f"({', '.join(c[:12] for c in self.corrupt)}): uploaded again")
        if self.upload:
            steps.append(f"  upload {len(self.upload)} objects, {self.upload_bytes / 1e6:.1f} MB (verified by sha256)")
        if self.create_user:
            steps.append("  create the service user")
        if self.install_env:
            how = f" ({self.env_tarball.path})" if self.env_tarball is not None else ""
            steps.append(f"  unpack the Python packages for this device{how}")
        if self.load_image:
            steps.append(f"  load the runtime image into docker, check its ID is {self.load_image[:19]}")
        if self.build_release:
            steps.append(f"  build releases/{self.release_id} from objects")
        if self.install_unit:
            steps.append(f"  install {UNIT_NAME} and reload systemd")
        if self.install_tuning:
            steps.append(f"  install {TUNING_UNIT} and its script, enable and (re)start it")
        if self.activate:
            steps.append(f"  switch current -> releases/{self.release_id}")
        if self.restart:
            steps.append("  restart the service")
        if self.gate:
            steps.append("  health gate (/readyz; golden outputs, p95 latency, RSS, throttling on the device), "
                         "then commit and prune old releases, or roll back")
        return steps + [f"  note: {n}" for n in self.notes]


def make_plan(target: Target, release: Release, facts: Facts, corrupt: frozenset[str] = frozenset(),
              kept_drift: ReleaseDrift | None = None) -> DeployPlan:
    """Check the device can take `release` and decide the steps.

    `corrupt`: objects on the device whose bytes are no longer their sha256 (`verify_objects`).
    `kept_drift`: how `release`, kept on the device but not active, differs from its manifest
    (`facts.ask_kept_release`); put back as the active release's drift is.
    """
    s = target.settings
    where = f"{target.name} ({target.host})"
    if facts.arch != s.arch:
        raise PlanError(f"{where}: device is {facts.arch}, inventory says {s.arch} ({target.source})")
    image = release.image
    if image is not None:
        if facts.docker != "yes":
            how = "no docker command" if facts.docker == "missing" else f"docker failed: {facts.docker}"
            sudo = " through `sudo -n` (its sudoers list)" if s.sudo else ""
            raise PlanError(f"{where}: ship: image ({target.source}) needs a usable docker engine on the device, "
                            f"and it has {how}; install docker (Debian: docker.io) and let "
                            f"{target.user or 'the login user'} "
                            f"run it{sudo}, or set ship: venv")
    elif facts.python != s.python:
        raise PlanError(f"{where}: device has python {facts.python or 'none'}, inventory says {s.python} "
                        f"({target.source}); the packages are built for the inventory's version")
    if not facts.systemd:
        raise PlanError(f"{where}: systemd is not running on the device; the runtime service needs it")
    if facts.lock_owner:
        raise PlanError(f"{where}: another deploy holds {s.root}/.lock ({facts.lock_owner}); "
                        f"if no deploy is running, remove it on the device: rm -r {s.root}/.lock")
    load_image = image is not None and image.image_id not in facts.images
    if load_image and not facts.zstd:
        raise PlanError(f"{where}: ship: image ({target.source}): the device has no zstd to unpack the runtime "
                        f"image's tarball (docker 20.10's docker load does not take zstd); install zstd")
    # an image's tarball goes up only while its image is not loaded, the packages' only while they
    # are not unpacked (the device drops either once it is done with it)
    install_env = release.env is not None and release.env.sha256 not in facts.envs
    env_tarball = release.env_tarball(facts.zstd) if install_env else None
    # a release dir's files only for a release still to be built: one on the device has them
    # linked already (its manifest and .pyc files may be another host's, the same release)
    built = set()
    if release.release_id in facts.releases:
        built = {f.sha256 for f in (*release.files, *release.compiled, release.manifest)}
        built -= {f.sha256 for f in (release.unit, *release.tuning)}  # installed from objects/
    wanted = {sha: f for sha, f in release.objects().items()
              if not (release.env is not None and sha == release.env.sha256)
              and not (image is not None and sha == image.sha256 and not load_image) and sha not in built}
    if env_tarball is not None:
        wanted[env_tarball.sha256] = env_tarball
    # converge: the active release's files put back from objects, the objects it reuses re-sent when corrupt
    drift = facts.drift if facts.current == release.release_id else kept_drift
    repair = _repairs(release, drift) if drift is not None else ()
    by_sha = release.objects()
    kept = {f.sha256 for f in (*release.files, *release.compiled, release.manifest, release.unit, *release.tuning)}
    for sha in {sha for _, sha, _ in repair} | (corrupt & kept):
        if sha in by_sha:
            wanted[sha] = by_sha[sha]
    have = facts.objects - corrupt
    upload = tuple(f for sha, f in sorted(wanted.items()) if sha not in have)
    missing = sorted({sha for _, sha, _ in repair} - have - wanted.keys())
    if missing:
        raise PlanError(f"{where}: release {release.release_id} on the device needs objects this host cannot send "
                        f"({', '.join(m[:12] for m in missing)}: another host's bytecode); deploy from that host")
    if image is not None:
        needed = sum(f.size for f in upload) * 2 + (image.unpacked_size if load_image else 0)
    else:
        needed = sum(f.size for f in upload) * 2 + (0 if release.packages.sha256 in facts.envs else 400_000_000)
    if facts.free_bytes < needed:
        raise PlanError(f"{where}: {facts.free_bytes / 1e6:.0f} MB free under {s.root}, "
                        f"this release needs about {needed / 1e6:.0f} MB")
    unit_changed = facts.unit_sha256 != release.unit.sha256
    drifted = [policy for policy, governor in facts.governors if governor != s.governor]
    tuning_changed = (facts.tuning_unit_sha256, facts.tuning_script_sha256) != tuple(f.sha256 for f in release.tuning)
    activate = facts.current != release.release_id
    restart = activate or unit_changed or facts.service_active != "active" or bool(repair)
    return DeployPlan(
        target=target.name,
        release_id=release.release_id,
        previous=facts.current,
        upload=upload,
        install_env=install_env,
        env_tarball=env_tarball,
        reload_units=(unit_changed and facts.unit_sha256 is not None) or (
            bool(release.tuning) and (tuning_changed or bool(drifted)) and facts.tuning_unit_sha256 is not None),
        big_records=facts.gnu_tar,
        build_release=release.release_id not in facts.releases,
        install_unit=unit_changed,
        create_user=release.env is not None and not facts.user_exists,  # a container runs as uid 10001
        load_image=image.image_id if load_image and image is not None else None,
        activate=activate,
        restart=restart,
        # also when a deploy died after activating: its release was never judged
        gate=restart or facts.committed != release.release_id,
        repair=repair,
        corrupt=tuple(sorted(corrupt & wanted.keys())),
        install_tuning=bool(release.tuning) and (tuning_changed or bool(drifted)),
        notes=((f"cpufreq {', '.join(drifted)}: governor is not {s.governor}; the tuning unit re-applies it",)
               if release.tuning and drifted and not tuning_changed else ())
        + ((f"{len(corrupt - wanted.keys())} object(s) of other releases no longer match their sha256 "
            f"({', '.join(sorted(c[:12] for c in corrupt - wanted.keys()))}): left as they are (status "
            f"reports them); a rollback to a release that needs them is refused",) if corrupt - wanted.keys() else ()),
    )


def _repairs(release: Release, drift: ReleaseDrift) -> tuple[tuple[str, str, str], ...]:
    """Return (path, sha256, kind) for each file of the release on the device that differs from its
    manifest or whose object turned out corrupt; the sha256 is this host's where it has the file."""
    ours = {f.path: f.sha256 for f in (*release.files, *release.compiled, release.manifest)}
    found = {path: (ours.get(path) or sha, kind) for path, kind, sha in drift.files}
    return tuple((path, sha, kind) for path, (sha, kind) in sorted(found.items()) if sha)
