"""Roll a bundle out to many devices: canary and batch waves, a failure limit, rollback, resume, a record."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..deploy import gather_facts
from ..inventory import Target
from .plan import RolloutError, RolloutPlan, plan_rollout, resume_targets
from .report import LiveProgress, RolloutRecord, latest_record, print_table
from .run import DeviceOutcome, prepare_releases, run_rollout, summary_counts

__all__ = ["RolloutError", "RolloutPlan", "DeviceOutcome", "plan_rollout", "resume_targets", "latest_record",
           "print_table", "rollout", "prepare_releases"]


def rollout(targets: list[Target], plan: RolloutPlan, bundle_dir: Path, build_dir: Path, meta: dict | None = None,
            progress: bool = True, log=print, image_tag: str | None = None) -> dict:
    """Prepare the releases, run `plan` and return the rollout's record (also under build/rollouts/<id>/)."""
    t0 = time.monotonic()
    by_name = {t.name: t for t in targets}
    chosen = [by_name[n] for n in plan.targets]
    first = plan.waves[0] if plan.waves else []
    # the first wave's devices are asked for their facts while the host prepares the releases
    with ThreadPoolExecutor(max(1, min(plan.parallel, len(first))), thread_name_prefix="facts") as ahead:
        facts = {n: ahead.submit(gather_facts, by_name[n]) for n in first}
        releases = prepare_releases(chosen, bundle_dir, build_dir, log=log,
                                    **({"image_tag": image_tag} if image_tag else {}))
        record = RolloutRecord(build_dir / "rollouts", plan, bundle_dir, meta or {})
        live = LiveProgress(plan, enabled=progress)

        def on_event(kind: str, wave: int, payload) -> None:
            if kind in ("device", "reverted"):
                record.device(payload)
            elif kind in ("wave", "stopped"):
                record.checkpoint()
            live(kind, wave, payload)

        with live:
            outcomes, stopped = run_rollout(chosen, plan, releases, bundle_dir, build_dir, record.log_dir, on_event,
                                            facts=facts)
    return record.finish(stopped, time.monotonic() - t0, summary_counts(outcomes))
