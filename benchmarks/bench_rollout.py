"""Rollout to N lab devices: first deploy, then a no-op re-run, wall time and SSH bytes sent.

    .venv/bin/python benchmarks/bench_rollout.py [--devices 3] [--arch amd64] [--bundle DIR] [--rounds 3]

Starts its own lab (refuses to run over one that is up) with an inventory in a temporary dir,
takes it down at the end. One wave of all N devices, N connections. Bytes are what the host's
SSH transports wrote (encrypted packets, counted in paramiko's Packetizer.write_all), summed
over the devices; the no-op's bytes are facts, /readyz and nothing else. The first deploy
includes the health gate (golden outputs) and the packages' first unpack on each device.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko.packet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgefleet import lab  # noqa: E402
from edgefleet.inventory import load_inventory  # noqa: E402
from edgefleet.rollout import plan_rollout, rollout  # noqa: E402

_sent = {"bytes": 0}
_lock = threading.Lock()
_write_all = paramiko.packet.Packetizer.write_all


def _counting_write_all(self, out):
    with _lock:
        _sent["bytes"] += len(out)
    return _write_all(self, out)


paramiko.packet.Packetizer.write_all = _counting_write_all


def timed(targets, bundle: Path, build: Path) -> tuple[float, int, dict]:
    plan = plan_rollout([t.name for t in targets], canary=0, batch="100%", max_fail=0, parallel=len(targets))
    _sent["bytes"] = 0
    t0 = time.perf_counter()
    doc = rollout(targets, plan, bundle, build, progress=False, log=lambda _: None)
    return time.perf_counter() - t0, _sent["bytes"], doc


def reset(targets) -> None:
    """Remove everything a deploy put on the devices, so the next rollout is a first deploy."""
    from edgefleet.transport import connect

    for t in targets:
        c = connect(t)
        try:
            c.run("systemctl disable --now edgefleet-runtime.service edgefleet-tuning.service >/dev/null 2>&1; "
                  "rm -rf /opt/edgefleet /etc/systemd/system/edgefleet-*.service /usr/local/lib/edgefleet; "
                  "systemctl daemon-reload", hide=True, warn=True, in_stream=False)
        finally:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--arch", default="amd64", choices=["amd64", "arm64"])
    ap.add_argument("--bundle", type=Path, default=REPO / "build" / "bundles" / "all-minilm-l6-v2-int8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    targets_dir, build = tmp / "targets", tmp / "build"
    shutil.copytree(REPO / "targets" / "boards", targets_dir / "boards")
    build.mkdir()
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (build / "device-envs").symlink_to(REPO / "build" / "device-envs")
    paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=targets_dir)
    try:
        with lab.session(paths, devices=args.devices, arch=args.arch):
            inventory = load_inventory(targets_dir)
            targets = [inventory.target(n) for n in sorted(inventory.targets) if n.startswith("lab-")]
            firsts, noops = [], []
            for _ in range(args.rounds):
                reset(targets)
                secs, sent, doc = timed(targets, args.bundle, build)
                assert doc["counts"]["ok"] == len(targets), doc
                firsts.append((secs, sent))
                secs, sent, doc = timed(targets, args.bundle, build)
                assert doc["counts"].get("unchanged") == len(targets), doc
                noops.append((secs, sent))
    except lab.LabBusy as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first_s, noop_s = statistics.median(s for s, _ in firsts), statistics.median(s for s, _ in noops)
    print(f"\nrollout to {len(targets)} {args.arch} lab device(s), {args.rounds} rounds, medians")
    print(f"{'':10} {'wall s':>8} {'sent MB':>9}")
    print(f"{'first':10} {first_s:8.2f} {statistics.median(b for _, b in firsts) / 1e6:9.2f}")
    print(f"{'no-op':10} {noop_s:8.2f} {statistics.median(b for _, b in noops) / 1e6:9.3f}")
    print(f"no-op / first: {noop_s / first_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
