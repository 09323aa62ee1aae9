"""Roll a bundle out to many devices: canary and batch waves, a failure limit, rollback, resume, a record."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..deploy import gather_facts
from ..inventory import Target
from .plan import RolloutError, RolloutPlan, choose_canary, plan_rollout, resume_targets
from .report import LastKnown, LiveProgress, RolloutRecord, latest_record, print_table
from .run import DeviceOutcome, prepare_releases, run_rollout, summary_counts

__all__ = ["RolloutError", "RolloutPlan", "DeviceOutcome", "plan_rollout", "resume_targets", "latest_record",
           "print_table", "rollout", "prepare_releases"]


def rollout(targets: list[Target], plan: RolloutPlan, bundle_dir: Path, build_dir: Path, meta: dict | None = None,
            progress: bool = True, log=print, image_tag: str | None = None) -> dict:
    """Prepare the releases, run `plan` and return the rollout's record (also under build/rollouts/<id>/).

    `progress`: a live display (a terminal); else one plain line per device and per wave through `log`.
    """
    from ..tune.recorded import apply_tuning

    t0 = time.monotonic()
    # each board class's recorded choice (`tune`), where the inventory pins nothing: before any release is made
    by_name = {t.name: apply_tuning(t, build_dir)[0] for t in targets}
    chosen = [by_name[n] for n in plan.targets]
    # the first wave's devices are asked for their facts while the host prepares the releases; with a
    # canary, every device (the canary is chosen among those whose release changes)
    ask = plan.targets if plan.canary_wave and len(plan.waves) > 1 else (plan.waves[0] if plan.waves else ())
    with ThreadPoolExecutor(max(1, min(plan.parallel, len(ask))), thread_name_prefix="facts") as ahead:
        facts = {n: ahead.submit(gather_facts, by_name[n]) for n in ask}
        releases = prepare_releases(chosen, bundle_dir, build_dir, log=log,
                                    **({"image_tag": image_tag} if image_tag else {}))
        if len(ask) > len(plan.waves[0]):
            plan = _changing_canary(plan, facts, releases, log)
            facts = {n: facts[n] for n in plan.waves[0]}
        record = RolloutRecord(build_dir / "rollouts", plan, bundle_dir, meta or {})
        live = LiveProgress(plan, enabled=progress, plain=log)
        last_known = LastKnown(build_dir / "rollouts")

        def on_event(kind: str, wave: int, payload) -> None:
            if kind in ("device", "reverted"):
                record.device(payload)
            elif kind in ("wave", "stopped"):
                record.checkpoint()
            live(kind, wave, payload)

        with live:
            outcomes, stopped = run_rollout(chosen, plan, releases, bundle_dir, build_dir, record.log_dir, on_event,
                                            facts=facts, last_known=last_known)
    return record.finish(stopped, time.monotonic() - t0, summary_counts(outcomes))


def _changing_canary(plan: RolloutPlan, facts: dict, releases: dict, log) -> RolloutPlan:
    """Return `plan` with a canary whose release changes (facts that could not be had count as changing)."""
    changing = set()
    for name, future in facts.items():
        found = future.result()
        if found is None or found.current != releases[name].release_id:
            changing.add(name)
    chosen = choose_canary(plan, changing)
    if chosen != plan:
        log(f"canary: {', '.join(chosen.waves[0])} instead of {', '.join(plan.waves[0])} "
            f"(already on its new release: it would test nothing)")
    return chosen
