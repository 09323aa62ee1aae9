"""Signed Mender artifacts of edgefleet releases: one per board class (device type and release).

An artifact's payload is the release an SSH deploy uploads (every object named by its sha256,
the packages' tarball among them) and `edgefleet-release.json`, which tells the update module
(`device/module.py`) how to lay it out and gate it. Devices of one board class share an
artifact, so the release is rendered for the class (its runtime.yaml and unit name the class,
not a device); devices of a class whose settings differ get one artifact per distinct release.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..deploy.release import Release
from ..device_env import PYC_MARK
from ..errors import EdgefleetError, InputError
from ..inventory import Target
from ..render import GPU_GROUPS, TUNING_SCRIPT_PATH, TUNING_UNIT, engine_cache_dir, uses_gpu
from .device import MODULE_NAME
from .device.module import SPEC_FORMAT, SPEC_NAME

__all__ = ["BoardClass", "MenderError", "device_type", "board_classes", "artifact_spec", "artifact_name",
           "write_artifact", "validate_artifact", "read_artifact", "MENDER_ARTIFACT", "RELEASE_PROVIDES"]

MENDER_ARTIFACT = "mender-artifact"
RELEASE_PROVIDES = "edgefleet.release"  # artifact_provides key: the edgefleet release id


class MenderError(EdgefleetError):
    """mender-artifact is missing or failed; the message names the artifact and the tool's last lines."""


def device_type(target: Target) -> str:
    """Return the target's Mender device type: `mender.device_type`, else its board's name."""
    return target.settings.mender.device_type or target.board.name


@dataclass(frozen=True)
class BoardClass:
    """The devices of one device type that take the same release, and that release."""

    device_type: str
    release: Release
    targets: tuple[str, ...]
    representative: Target


def class_target(target: Target) -> Target:
    """Return `target` renamed to its device type: a release rendered for it suits every device of the class."""
    return dataclasses.replace(target, name=device_type(target))


def board_classes(targets: list[Target], make_release) -> list[BoardClass]:
    """Group `targets` by device type and by the release `make_release(class_target)` gives each.

    `make_release(target) -> Release` is the SSH deploy's (render, check, packages, release).
    """
    if not targets:
        raise InputError("no targets selected")
    image = [t.name for t in targets if t.settings.ship != "venv"]
    if image:
        raise InputError(f"{', '.join(image)}: ship: image releases are not packaged as Mender artifacts "
                         f"(the edgefleet-release module installs venv releases); set ship: venv")
    classes: dict[tuple[str, str], BoardClass] = {}
    for target in targets:
        release = make_release(class_target(target))
        key = (device_type(target), release.release_id)
        if key in classes:
            found = classes[key]
            classes[key] = dataclasses.replace(found, targets=(*found.targets, target.name))
        else:
            classes[key] = BoardClass(key[0], release, (target.name,), target)
    return sorted(classes.values(), key=lambda c: (c.device_type, c.release.release_id))


def artifact_spec(board: BoardClass) -> dict:
    """Return the update module's instructions for `board`'s release (the artifact's SPEC_NAME file)."""
    release, s = board.release, board.representative.settings
    env = release.packages
    tuning = None
    if release.tuning:
        unit, script = release.tuning
        tuning = {"name": TUNING_UNIT, "unit_sha256": unit.sha256, "script_sha256": script.sha256,
                  "script_path": TUNING_SCRIPT_PATH}
    return {
        "format": SPEC_FORMAT,
        "release_id": release.release_id,
        "device_type": board.device_type,
        "root": s.root,
        "service_user": s.service_user,
        "keep_releases": s.deploy.keep_releases,
        "links": [[f.sha256, f.path] for f in (*release.files, *release.compiled, release.manifest)],
        "compile": not release.compiled,
        "env": {"sha256": env.sha256, "pyc_mark": PYC_MARK},
        "unit": {"name": release.unit.path, "sha256": release.unit.sha256},
        "tuning": tuning,
        "gpu_groups": list(GPU_GROUPS) if uses_gpu(s) else [],  # the service user joins those that exist
        "engine_cache": engine_cache_dir(s),  # TensorRT engines (None: the target does not ask for TensorRT)
        "gate": {"port": s.runtime.port, "token": s.runtime.token, "ready_timeout_s": s.health.ready_timeout_s,
                 "warmup_s": s.health.warmup_s,
                 "latency_rounds": s.health.latency_rounds, "latency_budget_ms": s.health.latency_budget_ms,
                 "rss_budget_mib": s.health.rss_budget_mib, "emulated": s.emulated},
    }


def artifact_name(board: BoardClass) -> str:
    """Return the artifact's name (also its file name, with .mender): board class and release id."""
    return f"edgefleet-{board.device_type}-{board.release.release_id}"


def _tool_output(res: subprocess.CompletedProcess) -> str:
    return (res.stderr or res.stdout or "").strip()[-600:]


def write_artifact(board: BoardClass, out_dir: Path, signing_key: Path, compression: str = "gzip") -> Path:
    """Write and sign `board`'s artifact into `out_dir`; return its path (named by board class and release).

    The payload is staged as hard links where it can be (the objects are often GBs of packages).
    """
    if shutil.which(MENDER_ARTIFACT) is None:
        raise MenderError(f"{MENDER_ARTIFACT} is not installed (Debian: apt-get install mender-artifact; "
                          f"scripts/setup.sh installs it)")
    if not signing_key.is_file():
        raise InputError(f"signing key {signing_key} does not exist (config edgefleet.mender.signing_key; "
                         f"make one with: invoke mender.keygen)")
    out_dir.mkdir(parents=True, exist_ok=True)
    release = board.release
    out = out_dir / f"{artifact_name(board)}.mender"
    objects = {**release.objects(), release.packages.sha256: release.env_tarball(zstd=False)}
    with tempfile.TemporaryDirectory(prefix="edgefleet-mender-", dir=out_dir) as tmp:
        stage = Path(tmp)
        argv = [MENDER_ARTIFACT, "write", "module-image", "--type", MODULE_NAME,
                "--artifact-name", artifact_name(board), "--device-type", board.device_type,
                "--provides", f"{RELEASE_PROVIDES}:{release.release_id}",
                "--software-name", "edgefleet", "--software-version", release.release_id,
                "--compression", compression, "--key", str(signing_key), "--output-path", str(out)]
        for sha, f in sorted(objects.items()):
            dest = stage / sha
            if f.source is not None:
                try:
                    dest.hardlink_to(f.source)
                except OSError:  # another filesystem
                    shutil.copyfile(f.source, dest)
            else:
                dest.write_bytes(f.read())
            argv += ["--file", str(dest)]
        spec = stage / SPEC_NAME
        spec.write_text(json.dumps(artifact_spec(board), indent=1, sort_keys=True) + "\n")
        argv += ["--file", str(spec)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        out.unlink(missing_ok=True)
        raise MenderError(f"{out.name}: {MENDER_ARTIFACT} write failed (exit {res.returncode}): {_tool_output(res)}")
    return out


def validate_artifact(path: Path, public_key: Path) -> None:
    """Check `path`'s signature and checksums with `public_key` (mender-artifact validate), or fail."""
    res = subprocess.run([MENDER_ARTIFACT, "validate", "--key", str(public_key), str(path)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise MenderError(f"{path.name}: not valid with {public_key}: {_tool_output(res)}")


def read_artifact(path: Path, public_key: Path | None = None) -> str:
    """Return what `mender-artifact read` says about `path` (name, device types, provides, files)."""
    argv = [MENDER_ARTIFACT, "read", "--no-progress", *(["--key", str(public_key)] if public_key else []), str(path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise MenderError(f"{path.name}: {MENDER_ARTIFACT} read failed: {_tool_output(res)}")
    return res.stdout
