"""Mender tasks: the signing key, signed artifacts per board class, and a device's bootstrap and standalone install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Collection, Exit

from .. import paths
from ..inventory import load_inventory
from ._errors import UsageError, exits_on_user_error, require
from ._task import task
from .fleet import _targets
from .image import image_tag

DEFAULTS = {"signing_key": "build/mender/keys/signing.pem", "out": "build/mender", "compression": "gzip"}


def _setting(c, key: str) -> Path:
    value = (c.config.get("edgefleet", {}).get("mender", {}) or {}).get(key) or DEFAULTS[key]
    path = Path(value).expanduser()
    return path if path.is_absolute() else paths.repo_root() / path


@task(help={"key": "where to write the private key (default: config edgefleet.mender.signing_key)"})
@exits_on_user_error
def keygen(c, key=None):
    """Make an ECDSA P-256 artifact signing key (private 0600) and its public key beside it."""
    from ..mender.keys import make_signing_key

    private, public = make_signing_key(Path(key) if key else _setting(c, "signing_key"))
    print(f"wrote {private} (private, 0600) and {public} (public: ArtifactVerifyKey on the devices)")


@task(help={
    "group": "every device of a group: one artifact per board class in it",
    "target": "one device: the artifact of its board class",
    "bundle": "bundle directory (default: config edgefleet.bundle)",
    "out": "directory for the artifacts (default: config edgefleet.mender.out, build/mender)",
    "json": "print one JSON document (per artifact: path, device type, release, devices, sizes)",
})
@exits_on_user_error
def artifact(c, group=None, target=None, bundle=None, out=None, json_=False):
    """Write a signed Mender artifact (edgefleet-release update module) per board class of the selection."""
    from ..deploy import prepare_release
    from ..mender.artifact import board_classes, read_artifact, validate_artifact, write_artifact
    from ..mender.keys import public_key_path

    say = (lambda text: print(text, file=sys.stderr)) if json_ else print
    bundle_dir = Path(bundle).resolve() if bundle else paths.bundle_dir(c)
    build = paths.build_dir(c)
    key = _setting(c, "signing_key")
    out_dir = Path(out).resolve() if out else _setting(c, "out")
    tag = image_tag(c)
    compression = str((c.config.get("edgefleet", {}).get("mender", {}) or {}).get("compression")
                      or DEFAULTS["compression"])
    classes = board_classes(_targets(c, target, group),
                            lambda t: prepare_release(t, bundle_dir, build, image_tag=tag, log=say))
    report = []
    for board in classes:
        path = write_artifact(board, out_dir, key, compression)
        public = public_key_path(key)
        if public.is_file():  # what a device's ArtifactVerifyKey will check
            validate_artifact(path, public)
        provides = [line.strip() for line in read_artifact(path).splitlines() if "edgefleet.release" in line]
        # what `deploy` uploads to a device with nothing on it: gzip packages, or zstd where it has zstd
        cold = sum(f.size for f in board.release.objects().values())
        cold_zstd = cold - board.release.env_tarball(zstd=False).size + board.release.env_tarball(zstd=True).size
        report.append({"artifact": str(path), "device_type": board.device_type,
                       "release_id": board.release.release_id, "devices": list(board.targets),
                       "artifact_bytes": path.stat().st_size, "ssh_cold_upload_bytes": cold,
                       "ssh_cold_upload_zstd_bytes": cold_zstd,
                       "validated_with": str(public) if public.is_file() else None, "provides": provides})
        say(f"{board.device_type:18} {board.release.release_id}  {path.stat().st_size / 1e6:7.1f} MB "
            f"(SSH cold upload {cold / 1e6:.1f} MB, {cold_zstd / 1e6:.1f} MB with zstd)  {', '.join(board.targets)}")
        say(f"  {path}" + ("  signature valid" if public.is_file() else f"  (no {public.name}: not validated)"))
    if json_:
        print(json.dumps({"artifacts": report}, indent=2))


@task(help={"target": "device name from the inventory",
            "key": "public key to install as ArtifactVerifyKey (default: the signing key's .pub.pem)"})
@exits_on_user_error
def bootstrap(c, target=None, key=None):
    """Ready a device (with mender-client) for edgefleet artifacts: update module, verify key, device type."""
    from ..mender.keys import public_key_path
    from ..mender.standalone import bootstrap as run

    tgt = load_inventory(paths.targets_dir(c)).target(require(target, "--target", "mender.bootstrap"))
    run(tgt, Path(key) if key else public_key_path(_setting(c, "signing_key")))


@task(help={"target": "device name from the inventory", "artifact": "the .mender file to install",
            "no_commit": "install only; leave `mender commit` or `mender rollback` to you",
            "json": "print the result as one JSON document"})
@exits_on_user_error
def install(c, target=None, artifact=None, no_commit=False, json_=False):
    """Install an artifact with the device's mender-client in standalone mode, then commit (gate) or roll back."""
    from ..mender.standalone import install as run

    tgt = load_inventory(paths.targets_dir(c)).target(require(target, "--target", "mender.install"))
    path = Path(require(artifact, "--artifact", "mender.install"))
    if not path.is_file():
        raise UsageError(f"mender.install: {path} is not a file")
    result = run(tgt, path, commit=not no_commit, log=(lambda t: print(t, file=sys.stderr)) if json_ else print)
    if json_:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.detail:
        print(result.detail)
    if not result.installed or (not no_commit and not result.committed):
        raise Exit(f"mender.install: {tgt.name} is on {result.active_artifact or 'unknown'}", code=1)


ns = Collection("mender", keygen, artifact, bootstrap, install)  # DEFAULTS: tasks.py puts them under edgefleet.mender
