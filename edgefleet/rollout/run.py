"""Carry out a rollout plan: prepare releases once, deploy wave by wave in threads, stop and roll back.

Each device's deploy is independent (its own SSH connection, lock and health gate); a wave runs
at most `plan.parallel` of them at a time. When failures pass the limit, devices of the wave
not yet started are left alone, the wave's devices that took the new release go back to the
one they had, and later waves are not reached.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..deploy import DEFAULT_IMAGE_TAG, deploy, gather_facts, prepare_release, revert
from ..deploy.facts import Facts
from ..deploy.gpu_packages import gpu_package_check
from ..deploy.release import Release
from ..deploy.variant import pick_variant
from ..device_env import build_target_env
from ..errors import InputError
from ..inventory import Target
from ..inventory_check import check_bundle_fits
from ..paths import repo_root
from ..render import check_rendered_many, render_target
from ..textclip import keep_tail
from .plan import (
    FAILED,
    NOT_REACHED,
    OK_RESULTS,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    RolloutPlan,
    env_key,
    limit_exceeded,
    to_roll_back,
)

__all__ = ["DeviceOutcome", "prepare_releases", "run_rollout"]


@dataclass
class DeviceOutcome:
    """How one device ended the rollout."""

    target: str
    wave: int
    result: str = NOT_REACHED
    previous: str | None = None  # release active before
    new: str | None = None  # release the rollout brought
    active: str | None = None  # release active at the end, when known
    latency_ms: float | None = None  # p95 of the gate's golden requests, measured on the device
    temperature_c: float | None = None  # hottest zone during the gate
    rss_mib: float | None = None
    gate_notes: list[str] = field(default_factory=list)  # measured but not judged (emulated, throttled)
    variant: str | None = None  # the bundle variant the device got (int8, int8-static, fp32, fp16)
    tuned: str = ""  # the tuning file its variant and threads came from (`tune`), when one did
    warnings: list[str] = field(default_factory=list)  # passed, but not as asked (variant, providers)
    seconds: float = 0.0
    error: str = ""
    where: str = ""  # where the device is now, in words: "on B", "rolled back to A", "unreachable: last known A"
    bundle: str | None = None  # the new release's bundle identity (sha256 of bundle.json, short)
    previous_from: str = "device"  # where `previous` comes from: device (its facts), last known, unknown

    def as_dict(self) -> dict:
        return asdict(self)


def prepare_releases(targets: list[Target], bundle_dir: Path, build_dir: Path, log=print,
                     image_tag: str = DEFAULT_IMAGE_TAG) -> dict[str, Release]:
    """Resolve Python packages once per (arch, python, pins, sources), then collect each target's release.

    `ship: image` targets need no packages: they get `image_tag`'s image for their arch.
    """
    def key(t: Target) -> tuple:
        s = t.settings
        return env_key(s.arch, s.python, s.packages.pins, s.packages.find_links, s.packages.index_url)

    refused = [error for t in targets if (error := gpu_package_check(t)[0])]
    if refused:  # before any device is touched: the package set cannot give what they require
        raise InputError("; ".join(refused))
    for t in targets:  # every value the bundle (the target's variant) cannot honour, before packages
        check_bundle_fits(t, pick_variant(t, bundle_dir).bundle_dir)
    envs = {}
    requirements = repo_root() / "payload" / "requirements.txt"
    for t in targets:
        if t.settings.ship == "venv" and key(t) not in envs:
            t0 = time.monotonic()
            envs[key(t)] = build_target_env(t, requirements, build_dir / "device-envs")
            log(f"packages for {t.settings.arch}/python {t.settings.python}{' with pins' if key(t)[2] else ''}: "
                f"{envs[key(t)].sha256[:12]} ({time.monotonic() - t0:.1f} s)")
    # every target's rendered files checked in one batch (one systemd-analyze, one shellcheck)
    rendered = {t.name: render_target(t) for t in targets}
    notes = check_rendered_many(list(rendered.values()), build_dir / "checked")
    for note in dict.fromkeys(notes):
        log(f"note: {note}")
    return {t.name: prepare_release(t, pick_variant(t, bundle_dir).bundle_dir, build_dir, env=envs.get(key(t)),
                                    image_tag=image_tag, log=log, rendered=rendered[t.name])
            for t in targets}


def _file_log(path: Path) -> Callable[[str], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, path.open("a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    return log


def _deploy_one(target: Target, release: Release, bundle_dir: Path, build_dir: Path, out: DeviceOutcome,
                log: Callable[[str], None], facts: Future | None = None,
                last_known: Callable[[str], str | None] = lambda name: None) -> DeviceOutcome:
    t0 = time.monotonic()
    out.new, out.bundle = release.release_id, release.bundle_id
    seen: list[Facts] = []  # the device's facts, once the deploy read them
    try:
        r = deploy(target, bundle_dir, build_dir, log=log, release=release,
                   facts=facts.result() if facts is not None else None, on_facts=seen.append)
    except Exception as exc:  # one device's failure is a result, not the rollout's end
        out.result, out.error = FAILED, keep_tail(str(exc) or type(exc).__name__)
        log(f"FAILED: {out.error}")
        if not str(exc):
            log(traceback.format_exc())
        # where it is now: asked again (it may have been mid-switch), else what was known before
        out.previous = seen[0].current if seen else last_known(target.name)
        out.previous_from = "device" if seen else "last known" if out.previous else "unknown"
        now = gather_facts(target)
        if now is None:
            out.where = f"unreachable: last known {out.previous}" if out.previous else "unreachable"
        else:
            out.active = now.current
            out.where = (f"still on {now.current}" if now.current == out.previous
                         else f"on {now.current or 'no release'} (was {out.previous or 'no release'})")
    else:
        out.previous, out.temperature_c, out.variant, out.tuned = r.previous, r.temperature_c, r.variant, r.tuned
        out.warnings = list(r.warnings)
        if r.health is not None:
            out.latency_ms, out.rss_mib, out.gate_notes = r.health.p95_ms, r.health.rss_mib, list(r.health.notes)
            out.warnings += [n for n in r.health.notes if n.startswith("provider fallback")]
        if r.ok:
            out.result = ("unchanged" if not r.changed else "repaired" if r.repaired else "updated")
            out.active = r.release_id
            out.where = f"on {r.release_id}"
        else:
            reason = r.health.reason if r.health is not None else "no health result"
            out.result, out.error = FAILED, keep_tail(reason)
            out.active = r.previous if r.rolled_back else r.release_id
            out.where = (f"rolled back to {r.previous}" if r.rolled_back
                         else f"on {r.release_id} (failed its gate, nothing to roll back to)")
            log(f"FAILED: {out.error}" + (f"; the device rolled back to {r.previous}" if r.rolled_back else ""))
    out.seconds = time.monotonic() - t0
    return out


def _not_reached(out: DeviceOutcome, known: str | None) -> None:
    out.previous, out.previous_from = known, "last known" if known else "unknown"
    out.where = f"not reached: last known {known}" if known else "not reached"


def _revert_one(target: Target, out: DeviceOutcome, reason: str, log: Callable[[str], None]) -> DeviceOutcome:
    t0 = time.monotonic()
    try:
        back = revert(target, out.previous, reason, log=log)
        ok, why, out.active = back.ok, back.error, back.active
    except Exception as exc:
        ok, why, out.active = False, str(exc) or type(exc).__name__, None
    out.result = ROLLED_BACK if ok else ROLLBACK_FAILED
    out.where = (f"rolled back to {out.active}" if ok
                 else f"on {out.active}" if out.active else f"unknown: last known {out.new}")
    if not ok:
        out.error = keep_tail(f"rollback to {out.previous} failed: {why}")
        log(out.error)
    out.seconds += time.monotonic() - t0
    return out


def run_rollout(targets: list[Target], plan: RolloutPlan, releases: dict[str, Release], bundle_dir: Path,
                build_dir: Path, log_dir: Path, on_event: Callable[..., None] = lambda *a: None,
                facts: dict[str, Future] | None = None,
                last_known: Callable[[str], str | None] = lambda name: None) -> tuple[list[DeviceOutcome], bool]:
    """Run `plan`; return every device's outcome (in plan order) and whether the rollout stopped early.

    `on_event(kind, wave, payload)`: ("wave", i, names), ("device", i, outcome), ("stopped", i, failures),
    ("rollback", i, names), ("reverted", i, outcome); called from worker threads.
    `facts`: devices' facts being gathered already (`gather_facts` futures; None inside: ask again).
    `last_known(name)`: the release a device was last known on (earlier rollouts), for one that cannot be asked.
    """
    facts = facts or {}
    by_name = {t.name: t for t in targets}
    outcomes = {name: DeviceOutcome(name, i) for i, wave in enumerate(plan.waves, 1) for name in wave}
    logs = {name: _file_log(log_dir / f"{name}.log") for name in outcomes}
    failures, lock, stop = 0, threading.Lock(), threading.Event()

    def work(name: str) -> DeviceOutcome:
        nonlocal failures
        out = outcomes[name]
        if stop.is_set():  # the limit was passed while this device waited for a connection slot
            logs[name]("not reached: the rollout stopped")
            _not_reached(out, last_known(name))
        else:
            _deploy_one(by_name[name], releases[name], bundle_dir, build_dir, out, logs[name], facts.get(name),
                        last_known)
            with lock:
                failures += out.result == FAILED
                if limit_exceeded(failures, plan.max_fail):
                    stop.set()
        on_event("device", out.wave, out)
        return out

    stopped = False
    with ThreadPoolExecutor(max_workers=plan.parallel, thread_name_prefix="rollout") as pool:
        for i, wave in enumerate(plan.waves, 1):
            on_event("wave", i, list(wave))
            list(pool.map(work, wave))
            if not stop.is_set():
                continue
            stopped = True
            on_event("stopped", i, failures)
            back = to_roll_back({n: outcomes[n].as_dict() for n in wave})
            on_event("rollback", i, back)
            reason = f"wave {i} failed ({failures} device(s) failed, limit {plan.max_fail})"
            reverted = pool.map(_revert_one, [by_name[n] for n in back], [outcomes[n] for n in back],
                                [reason] * len(back), [logs[n] for n in back])
            for out in reverted:
                on_event("reverted", i, out)
            for n in (n for w in plan.waves[i:] for n in w):
                logs[n]("not reached: the rollout stopped")
                _not_reached(outcomes[n], last_known(n))
            break
    return [outcomes[n] for n in plan.targets], stopped


def summary_counts(outcomes: list[DeviceOutcome]) -> dict[str, int]:
    """Return how many devices ended in each result."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    counts["ok"] = sum(counts.get(r, 0) for r in OK_RESULTS)
    return counts
