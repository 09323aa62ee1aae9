"""The README's main job, as a user runs it: `invoke demo` against an arm64 lab device."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from edgefleet import lab
from edgefleet.lab import plan

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]


def test_invoke_demo_on_emulated_arm64():
    paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=REPO / "targets")
    if lab.status(paths):
        pytest.fail("a lab is already up; run `invoke lab.down` before this test")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "invoke"), "demo"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1500)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "Sentence similarity computed on lab-01 (arm64)" in out
        assert re.search(r"healthy, ready after [\d.]+ s, golden min cosine (0\.99\d+|1\.0000)", out), out[-3000:]
        release = re.search(r"release (r-[0-9a-f]{12}) on lab-01", out)
        assert release, out[-3000:]
        # a paraphrase pair scores well above an unrelated pair, computed on the device
        rows = dict(re.findall(r"(reset the conveyor belt|weather in Lisbon).*?(-?\d\.\d{3})", out))
        assert float(rows["reset the conveyor belt"]) > float(rows["weather in Lisbon"]) + 0.3

        # the device really is arm64 and runs the release under systemd
        lab_yaml = (REPO / "targets" / "lab.yaml").read_text()
        assert "arch: arm64" in lab_yaml
        ssh = ["ssh", "-i", str(paths.client_key), "-o", f"UserKnownHostsFile={paths.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(plan.LabDevice(1, "arm64").ssh_port),
               "root@127.0.0.1"]
        check = subprocess.run(ssh + ["uname -m; readlink /opt/edgefleet/current; "
                                      "systemctl is-active edgefleet-runtime.service edgefleet-tuning.service"],
                               capture_output=True, text=True, timeout=60)
        assert check.stdout.split() == ["aarch64", f"releases/{release.group(1)}", "active", "active"], check
    finally:
        lab.down(paths)
