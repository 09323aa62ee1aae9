"""Measure a bundle set on one device of each board class, choose, and record the choice.

Per board class: one device is picked as a rollout picks its canary (a real one before an
emulated one, a healthy one: its current release committed and its service active); the
candidate bundles go up as verified objects (objects/<sha256>, the deploy's upload, so a later
deploy of the chosen variant sends nothing again), are linked into a scratch directory under the
root (`tuning/<run>/`, outside releases, removed afterwards), and `edge_runtime.measure` runs
there with the device's current release (its onnxruntime) under the deploy lock.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from ..deploy.device import DeployError, Device, now
from ..deploy.facts import Facts, ask_facts
from ..deploy.lock import device_lock
from ..deploy.plan import DeployPlan
from ..deploy.release import ReleaseFile
from ..deploy.transfer import upload_objects
from ..deploy.variant import VARIANTS, bundle_variant, sibling
from ..digest import sha256_file
from ..errors import EdgefleetError, InputError
from ..inventory import Target
from ..paths import repo_root
from ..render import DEVICE_PYTHON
from ..transport import connect
from .choose import Choice, choose
from .records import STEP, Measurement, TuneDataError, parse_measurement

__all__ = ["TuneOptions", "BoardResult", "bundle_set", "pick_devices", "tune_board", "tune_group", "measure_on"]


@dataclass(frozen=True)
class TuneOptions:
    rounds: int = 5
    lengths: tuple[int, ...] = (16, 64, 128)
    length: int = 64  # the board's typical length: the choice is judged at it
    threads: tuple[int, ...] | None = None  # None: 1 .. len(big_cores)


@dataclass
class BoardResult:
    """One board class: the device measured, its measurement and the choice (or why none)."""

    board: str
    device: str
    emulated: bool
    measurement: Measurement | None
    choice: Choice | None
    error: str = ""
    path: Path | None = None  # build/tuning/<board>.json, once written


def bundle_set(bundle_dir: Path) -> dict[str, Path]:
    """Return the bundle set `bundle_dir` belongs to, by variant (those present beside it)."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "bundle.json").is_file():
        raise InputError(f"{bundle_dir}: no bundle.json (is it a bundle? invoke model.quantize)")
    found = {v: p for v in VARIANTS if (p := sibling(bundle_dir, v)) is not None and (p / "bundle.json").is_file()}
    found = found or {bundle_variant(bundle_dir): bundle_dir}
    for variant, path in found.items():
        if bundle_variant(path) != variant:
            raise InputError(f"{path / 'bundle.json'}: variant {bundle_variant(path)}, but its name says {variant}")
    return {v: found[v] for v in VARIANTS if v in found}


def pick_devices(targets: list[Target]) -> dict[str, list[Target]]:
    """Return, per board class, its devices in the order to try them: real ones first, then by name."""
    boards: dict[str, list[Target]] = {}
    for t in sorted(targets, key=lambda t: (t.settings.emulated, t.name)):
        boards.setdefault(t.board.name, []).append(t)
    return boards


def _healthy(facts: Facts) -> bool:
    return facts.current is not None and facts.current == facts.committed and facts.service_active == "active"


def _files(bundles: dict[str, Path]) -> list[ReleaseFile]:
    files = []
    for variant, bundle in bundles.items():
        for path in sorted(bundle.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                files.append(ReleaseFile(f"{variant}/{path.name}", sha256_file(path), path.stat().st_size, path))
    return files


def _spec(target: Target, bundles: dict[str, str], options: TuneOptions, config: str) -> dict:
    big = list(target.settings.big_cores or target.settings.affinity)
    threads = options.threads or tuple(range(1, max(len(big), target.settings.threads or 1) + 1))
    timeout = target.settings.deploy.command_timeout_s
    return {"candidates": bundles, "threads": list(threads), "cores": big, "lengths": list(options.lengths),
            "rounds": options.rounds, "budget_s": max(timeout * 0.6, 1.0), "control": "int8", "config": config}


def _upload(dev: Device, facts: Facts, files: list[ReleaseFile], log) -> None:
    missing = tuple({f.sha256: f for f in files if f.sha256 not in facts.objects}.values())
    plan = DeployPlan(target=dev.target.name, release_id="tune", previous=None, upload=missing, install_env=False,
                      build_release=False, install_unit=False, create_user=False, activate=False, restart=False,
                      gate=False)
    move_in, _ = upload_objects(dev, plan, log, verify_on_arrival=True)
    if move_in:
        dev.run(move_in, "move the candidate bundles into objects/")
    if not missing:
        log(f"  {dev.target.name}: the candidate bundles are on the device already (objects/)")


def measure_on(target: Target, bundles: dict[str, Path], options: TuneOptions, log=print,
               facts: Facts | None = None) -> Measurement:
    """Upload `bundles` to `target`, measure them there, clean up; return the parsed measurement."""
    conn = connect(target)
    try:
        dev = Device(conn, target, deadline=time.monotonic() + target.settings.deploy.device_deadline_s)
        facts = facts or ask_facts(dev)
        dev.owns_root = facts.owns_root
        if target.settings.ship != "venv" or facts.current is None:
            raise DeployError(f"{target.name}: {STEP}: tune runs the device's own onnxruntime from its current "
                              "release" + (" (ship: venv only)" if target.settings.ship != "venv"
                                           else ": the device has none yet; deploy it first"))
        files = _files(bundles)
        scratch = dev.path("tuning", f"run-{os.getpid()}-{int(time.time())}")
        with device_lock(dev, log, now(), reconnect=lambda: connect(target)):
            _upload(dev, facts, files, log)
            links = [f"mkdir -p {' '.join(quote(posixpath.join(scratch, v)) for v in bundles)}"]
            links += [f"ln -f {quote(dev.path('objects', f.sha256))} {quote(posixpath.join(scratch, f.path))}"
                      for f in files]
            try:
                dev.run(" && ".join(links), "lay out the tuning scratch dir")
                spec = _spec(target, {v: posixpath.join(scratch, v) for v in bundles}, options,
                             dev.path("current", "runtime.yaml"))
                source = (repo_root() / "payload" / "edge_runtime" / "measure.py").read_text()
                path = f"{dev.path('current', 'payload')}:{dev.path('current', 'site')}"
                log(f"  {target.name}: measuring {', '.join(bundles)} at {spec['threads']} threads, "
                    f"{options.rounds} rounds ...")
                result = dev.run(f"cd {quote(scratch)} && PYTHONPATH={quote(path)} {DEVICE_PYTHON} -c "
                                 f"{quote(source)} {quote(json.dumps(spec))}", STEP, privileged=False, warn=True)
                if not (result.stdout or "").strip():
                    raise TuneDataError(f"{target.name}: {STEP} printed nothing (exit {result.exited}): "
                                        f"{(result.stderr or '').strip()[-400:]}")
                return parse_measurement(target.name, result.stdout, spec)
            finally:
                dev.deadline = None  # the clean-up gets its own timeout, whatever the hour
                dev.run(f"rm -rf {quote(scratch)} && rmdir {quote(dev.path('tuning'))} 2>/dev/null; true",
                        "remove the tuning scratch dir", warn=True)
    finally:
        conn.close()


def tune_board(board: str, devices: list[Target], bundles: dict[str, Path], options: TuneOptions,
               log=print) -> BoardResult:
    """Measure on the first healthy device of `devices` (else the first that answers) and choose."""
    chosen, facts, errors = None, None, []
    for target in devices:
        try:
            conn = connect(target)
            try:
                found = ask_facts(Device(conn, target))
            finally:
                conn.close()
        except Exception as exc:  # one device that does not answer: the next of its board is asked
            errors.append(str(exc)[-200:] or type(exc).__name__)
            continue
        if _healthy(found):
            chosen, facts = target, found
            break
        if chosen is None and found.current is not None:
            chosen, facts = target, found
    if chosen is None:
        why = "; ".join(errors) or "no device has a release yet (deploy first)"
        return BoardResult(board, devices[0].name, devices[0].settings.emulated, None, None,
                           f"no device to measure: {why}")
    emulated = chosen.settings.emulated
    try:
        measurement = measure_on(chosen, bundles, options, log, facts)
    except EdgefleetError as exc:
        return BoardResult(board, chosen.name, emulated, None, None, str(exc)[-600:])
    except Exception as exc:  # the link (Fabric raises paramiko's own errors): this board's failure, not the run's
        return BoardResult(board, chosen.name, emulated, None, None,
                           f"{chosen.name}: {type(exc).__name__}: {str(exc)[-500:]}")
    # the default: what the service runs now, on the cores that exist there
    default_threads = min(chosen.settings.threads or 1, len(measurement.usable_cores) or 1)
    choice = choose(measurement, str(options.length), default_threads, emulated)
    return BoardResult(board, chosen.name, emulated, measurement, choice)


def tune_group(targets: list[Target], bundles: dict[str, Path], options: TuneOptions, log=print,
               parallel: int = 4) -> list[BoardResult]:
    """Tune every board class among `targets`, up to `parallel` boards at once (each on its own device)."""
    boards = pick_devices(targets)
    with ThreadPoolExecutor(max(1, min(parallel, len(boards))), thread_name_prefix="tune") as pool:
        futures = [pool.submit(tune_board, board, devices, bundles, options, log) for board, devices in boards.items()]
        return [f.result() for f in futures]
