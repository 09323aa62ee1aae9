"""Time no-op rollouts in one process: `rollout()` of every device of group `lab`, one wave.

    EDGEFLEET_LAB_SLOT=k PYTHONPATH=$PWD .venv/bin/python benchmarks/noop_probe.py TARGETS_DIR BUILD_DIR TAG N

Prints `TAG t1 t2 ... tN` (seconds). Run it from two work trees in turn against the same lab to
compare code before and after a change (benchmarks/RESULTS.md, "Converge on the no-op path"):
the devices must already be on the release both trees make (same payload, templates, bundle).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edgefleet.inventory import load_inventory
from edgefleet.rollout import plan_rollout, rollout

BUNDLE = Path("build/bundles/all-minilm-l6-v2-int8")


def main() -> int:
    targets_dir, build, tag, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    targets = load_inventory(targets_dir).group("lab")
    times = []
    for _ in range(n):
        plan = plan_rollout([t.name for t in targets], canary=0, batch="100%", max_fail=0, parallel=len(targets))
        t0 = time.monotonic()
        doc = rollout(targets, plan, BUNDLE, build, progress=False, log=lambda _: None)
        times.append(time.monotonic() - t0)
        if doc["counts"].get("unchanged") != len(targets):
            print(f"not a no-op: {doc['counts']}", file=sys.stderr)
            return 1
    print(tag, " ".join(f"{t:.3f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
