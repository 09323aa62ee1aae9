"""Exit codes as DESIGN.md promises them: 2 for an input or usage mistake, in every task, with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken_inventory(tmp_path_factory) -> Path:
    inventory = tmp_path_factory.mktemp("targets")
    shutil.copytree(REPO / "targets", inventory, dirs_exist_ok=True)
    (inventory / "broken.yaml").write_text("devices: [oops\n")
    return inventory


@pytest.mark.parametrize("args, inventory_broken, message", [
    (["render", "--target", "pi5-01"], True, "broken.yaml:"),
    (["deploy", "--target", "pi5-01"], True, "broken.yaml:"),
    (["rollback", "--target", "pi5-01"], True, "broken.yaml:"),
    (["status", "--target", "pi5-01"], True, "broken.yaml:"),
    (["rollout", "--group", "pis", "--dry-run"], True, "broken.yaml:"),
    (["status", "--target", "nope"], False, "unknown target 'nope'"),
    (["deploy"], False, "deploy: --target is required"),
    (["status"], False, "exactly one of --target or --group"),
    (["rollout", "--targets", "pi5-01", "--batch", "0", "--dry-run"], False, "--batch '0': need at least 1"),
    (["lab.fault", "--device", "lab-01", "--knob", "nope"], False, "--knob 'nope': expected one of"),
    (["tune", "--target", "pi5-01"], True, "broken.yaml:"),
    (["tune"], False, "exactly one of --target or --group"),
    (["tune", "--target", "pi5-01", "--threads", "0"], False, "--threads '0': each must be 1..256"),
    (["tune", "--target", "pi5-01", "--bundle", "/nonexistent-bundle"], False, "/nonexistent-bundle: no bundle.json"),
])
def test_input_and_usage_errors_exit_2(args, inventory_broken, message, broken_inventory):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'payload'}"}
    if inventory_broken:
        env["INVOKE_EDGEFLEET_TARGETS_DIR"] = str(broken_inventory)
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
