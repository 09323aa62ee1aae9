"""The `rollout` task: a bundle to a group or list of devices, in waves, with a failure limit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Collection, Exit

from ..inventory import Target, load_inventory
from ..paths import build_dir, bundle_dir, targets_dir
from ..rollout import latest_record, plan_rollout, print_table, resume_targets
from ..rollout import rollout as run
from ._errors import UsageError, exits_on_user_error
from ._task import task
from .fleet import _sigterm_unwinds
from .image import image_tag

DEFAULTS = {"canary": "1", "batch": "25%", "max_fail": "0", "parallel": 10}


def _names(c, group: str | None, targets: str | None, resume: bool) -> tuple[list[Target], dict]:
    """Return the targets to roll out to, in order, and what to record about the choice."""
    inventory = load_inventory(targets_dir(c))
    if resume:
        if group or targets:
            raise UsageError("--resume takes its devices from the last rollout; drop --group/--targets")
        record = latest_record(build_dir(c) / "rollouts")
        names = resume_targets(record)
        return [inventory.target(n) for n in names], {"resumed_from": record["rollout"], "bundle": record["bundle"],
                                                      "options": record.get("options", {})}
    if bool(group) == bool(targets):
        raise UsageError("give exactly one of --group or --targets (or --resume)")
    if group:
        return inventory.group(group), {"group": group}
    assert targets is not None  # exactly one of group and targets was given
    return [inventory.target(n.strip()) for n in targets.split(",") if n.strip()], {"targets": targets}


@task(help={
    "group": "every device of a group (sorted by name)",
    "targets": "comma-separated device names, in rollout order",
    "bundle": "bundle directory (default: config edgefleet.bundle; with --resume, the last rollout's)",
    "canary": "devices in the first wave, alone (N, or P% of the devices; default 1)",
    "batch": "devices per later wave (N or P%; default 25%)",
    "max_fail": "stop once more than this many devices failed (N or P%; default 0)",
    "parallel": "at most this many devices deployed at once (SSH connections; default 10)",
    "dry_run": "print the waves and change nothing",
    "resume": "re-run only the devices of the last rollout that did not end on its release",
    "json": "print one JSON document (the rollout record) instead of a table",
})
@exits_on_user_error
def rollout(c, group=None, targets=None, bundle=None, canary=None, batch=None, max_fail=None, parallel=None,
            dry_run=False, resume=False, json_=False):
    """Roll the bundle out in waves (canary, then batches), stop past --max-fail, roll back the failed wave."""
    out = sys.stderr if json_ else sys.stdout
    chosen, meta = _names(c, group, targets, resume)
    # given on the command line, else the resumed rollout's, else the defaults
    given = {"canary": canary, "batch": batch, "max_fail": max_fail, "parallel": parallel}
    options = {k: v if v is not None else meta.get("options", {}).get(k, DEFAULTS[k]) for k, v in given.items()}
    if resume and not chosen:
        print(f"nothing to resume: every device of rollout {meta['resumed_from']} is on its release", file=out)
        if json_:
            print(json.dumps({"resumed_from": meta["resumed_from"], "devices": {}, "status": "nothing to do"}))
        return
    plan = plan_rollout([t.name for t in chosen], options["canary"], options["batch"], options["max_fail"],
                        options["parallel"])
    bundle_path = Path(bundle) if bundle else Path(meta.get("bundle") or bundle_dir(c))
    meta.update(options={"canary": str(options["canary"]), "batch": str(options["batch"]),
                         "max_fail": str(options["max_fail"]), "parallel": plan.parallel})
    if dry_run:
        lines = plan.describe() + [f"  bundle {bundle_path}", "dry run: nothing was changed"]
        if json_:
            print(json.dumps({"dry_run": True, "bundle": str(bundle_path), "waves": [list(w) for w in plan.waves],
                              "max_fail": plan.max_fail, "parallel": plan.parallel, **meta}, indent=2))
        else:
            print("\n".join(lines))
        return
    print("\n".join(plan.describe()), file=out)
    _sigterm_unwinds()
    doc = run(chosen, plan, bundle_path, build_dir(c), meta=meta, progress=sys.stderr.isatty(),
              log=lambda line: print(line, file=out), image_tag=image_tag(c))
    if json_:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    if doc["status"] != "completed" or doc["counts"]["ok"] != len(doc["order"]):
        raise Exit(code=1)


ns = Collection("rollout")
ns.add_task(rollout)
