"""A lab fleet end to end: `lab.up --devices N` (boards round-robin), then `invoke rollout --group lab`.

    EDGEFLEET_LAB_SLOT=k .venv/bin/python benchmarks/bench_lab_fleet.py [--devices 10] [--arch arm64]
        [--bundle DIR] [--parallel 10]

Issue #8's done-when on arm64 (N=10) takes minutes on a 2-core machine, too long for CI; the
CI test is tests/integration/test_lab_fleet.py (3 amd64 devices). Starts its own lab (refuses
to run over one that is up) with an inventory in a temporary dir and takes it down at the end.
Prints the time to up, the rollout's time and its table, and per device the container's peak
and final memory and the CPU time it used (docker's cgroup figures), so a regression in the
lab's footprint shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgefleet import engine, lab  # noqa: E402
from edgefleet.lab import plan as lab_plan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--arch", default="arm64", choices=["amd64", "arm64"])
    ap.add_argument("--bundle", type=Path, default=REPO / "build" / "bundles" / "all-minilm-l6-v2-int8")
    ap.add_argument("--parallel", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lab-fleet-"))
    targets_dir = tmp / "targets"
    shutil.copytree(REPO / "targets" / "boards", targets_dir / "boards")
    paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=targets_dir)
    env = dict(os.environ, INVOKE_EDGEFLEET_TARGETS_DIR=str(targets_dir))
    try:
        if lab.status(paths):
            print("a lab is already up in this slot; run `invoke lab.down` first", file=sys.stderr)
            return 2
        t0 = time.monotonic()
        with lab.session(paths, devices=args.devices, arch=args.arch):
            up_s = time.monotonic() - t0
            boards = {d.name: d.board for d in lab.status(paths)}
            idle = {d.container: engine.usage(d.container) for d in lab.status(paths)}
            t1 = time.monotonic()
            proc = subprocess.run(
                [str(REPO / ".venv" / "bin" / "invoke"), "rollout", "--group", "lab", "--bundle", str(args.bundle),
                 "--parallel", str(args.parallel), "--batch", "100%", "--json"],
                cwd=REPO, env=env, capture_output=True, text=True)
            rollout_s = time.monotonic() - t1
            after = {d.container: engine.usage(d.container) for d in lab.status(paths)}
            load = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"\nlab.up --devices {args.devices} --arch {args.arch}: {up_s:.1f} s")
    print(f"invoke rollout --group lab ({args.devices} devices, canary 1 then the rest, parallel "
          f"{args.parallel}): {rollout_s:.1f} s, status {doc['status']}, counts {doc['counts']}")
    print(f"load average after: {' '.join(load)}")
    print("memory per container (cgroup): rss = anonymous memory, all = rss + page cache, peak = all's maximum")
    print(f"{'device':8} {'board':10} {'result':9} {'deploy s':>8} {'idle rss':>8} {'end rss':>8} "
          f"{'end all':>8} {'peak all':>8} {'CPU s':>7}")
    for name, device in sorted(doc["devices"].items()):
        container = lab_plan.container_name(int(name.split("-")[1]))
        print(f"{name:8} {boards.get(name, '?'):10} {device['result']:9} {device.get('seconds') or 0:8.1f} "
              f"{idle[container]['rss_mib']:8.0f} {after[container]['rss_mib']:8.0f} "
              f"{after[container]['memory_mib']:8.0f} {after[container]['peak_mib']:8.0f} "
              f"{after[container]['cpu_s']:7.1f}")
    print(f"all devices: rss at end {sum(u['rss_mib'] for u in after.values()):.0f} MiB, "
          f"rss + cache at end {sum(u['memory_mib'] for u in after.values()):.0f} MiB, "
          f"CPU {sum(u['cpu_s'] for u in after.values()):.0f} s")
    ok = doc["status"] == "completed" and doc["counts"].get("ok") == args.devices
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
