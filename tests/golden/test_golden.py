"""Golden files: each board profile renders exactly the checked-in files, and they pass the real tools.

Regenerate after an intended change: `.venv/bin/python -m tests.golden.regen`, then review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgefleet.render import (
    GPU_UNIT_EXPOSURE,
    MAX_EXPOSURE,
    RUNTIME_UNIT_EXPOSURE,
    TUNING_SCRIPT,
    UNIT_NAME,
    check_rendered,
    render_target,
    security_exposure,
    uses_gpu,
)

from .regen import GOLDEN, golden_targets

TARGETS = golden_targets()
HAVE_SYSTEMD = shutil.which("systemd-analyze") is not None


def test_every_board_profile_has_a_golden_device():
    boards = sorted(p.stem for p in (GOLDEN.parents[1] / "targets" / "boards").glob("*.yaml"))
    assert [b for b, _ in TARGETS] == boards
    assert {"pi5", "orin-nano", "orin-agx", "rk3588", "qemu-virt"} <= set(boards)


@pytest.mark.parametrize("board, target", TARGETS, ids=[b for b, _ in TARGETS])
def test_rendered_equals_golden(board, target):
    files = render_target(target)
    assert sorted(p.name for p in (GOLDEN / board).iterdir()) == sorted(f.name for f in files)
    for f in files:
        assert f.text == (GOLDEN / board / f.name).read_text(), (
            f"{board}/{f.name} differs; if intended run: .venv/bin/python -m tests.golden.regen")


@pytest.mark.skipif(not HAVE_SYSTEMD, reason="systemd-analyze not installed")
@pytest.mark.parametrize("board, target", TARGETS, ids=[b for b, _ in TARGETS])
def test_golden_files_pass_the_real_tools(board, target):
    files = render_target(target)
    notes = check_rendered(files)  # systemd-analyze verify, sh -n, shellcheck when installed
    assert all("not installed" in n for n in notes), notes
    exposure = security_exposure(next(f for f in files if f.name == UNIT_NAME))
    print(f"{board}: {UNIT_NAME} exposure {exposure}")
    assert exposure <= MAX_EXPOSURE
    # 1.4-1.6 before MemoryDenyWriteExecute, ~@resources, ...; a GPU unit sees device nodes
    assert exposure <= (GPU_UNIT_EXPOSURE if uses_gpu(target.settings) else RUNTIME_UNIT_EXPOSURE)


def test_a_gpu_unit_opens_the_gpu_and_a_cpu_unit_no_device():
    """Orin profiles ask for CUDA/TensorRT: their unit must not hide /dev (PrivateDevices=) nor refuse
    CUDA's JIT mappings; every other board keeps both."""
    for board, target in TARGETS:
        unit = (GOLDEN / board / UNIT_NAME).read_text().splitlines()
        if board.startswith("orin"):
            assert uses_gpu(target.settings)
            assert "PrivateDevices=no" in unit and "MemoryDenyWriteExecute=yes" not in unit
        else:
            assert not uses_gpu(target.settings)
            assert {"PrivateDevices=yes", "DevicePolicy=closed", "MemoryDenyWriteExecute=yes"} <= set(unit)


@pytest.mark.parametrize("board, target", TARGETS, ids=[b for b, _ in TARGETS])
def test_runtime_config_follows_the_contract(board, target):
    text = (GOLDEN / board / "runtime.yaml").read_text()
    config = yaml.safe_load(text)
    s = target.settings
    # the variant the board asks for is named in the file (the Orin boards: FP16, for their GPU)
    assert f"# bundle variant: {s.bundle.precision} " in text
    assert (s.bundle.precision == "fp16") == board.startswith("orin")
    assert config["affinity"] == s.affinity and config["sysfs_root"] == "/sys"
    if config["affinity"]:
        assert config["threads"] == len(config["affinity"])
    assert config["thermal"]["soft_c"] < config["thermal"]["hard_c"]
    assert set(config["limits"]) == {"max_body_bytes", "max_texts", "max_text_chars", "queue_depth"}
    unit = (GOLDEN / board / UNIT_NAME).read_text().splitlines()
    # no capability even for a negative nice: systemd sets Nice= before the runtime starts
    assert "AmbientCapabilities=" in unit and "CapabilityBoundingSet=" in unit
    assert ("SystemCallFilter=sched_setaffinity" in unit) == bool(config["affinity"])
    assert f"Nice={s.runtime.nice}" in unit


def fake_sysfs(root: Path, governors: list[str]) -> Path:
    for i, gov in enumerate(governors):
        policy = root / "devices/system/cpu/cpufreq" / f"policy{i}"
        policy.mkdir(parents=True)
        (policy / "scaling_governor").write_text(gov + "\n")
    return root


def run_tuning(script: Path, mode: str, sysfs: Path, state: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEFLEET_SYSFS=str(sysfs), STATE_DIRECTORY=str(state), PATH="/usr/bin:/bin")
    return subprocess.run(["sh", str(script), mode], capture_output=True, text=True, env=env)


def governors(sysfs: Path) -> list[str]:
    return [p.read_text().strip() for p in sorted(sysfs.glob("devices/system/cpu/cpufreq/policy*/scaling_governor"))]


@pytest.mark.parametrize("board", ["pi5", "rk3588", "orin-nano"])
def test_tuning_script_applies_idempotently_and_reverts(tmp_path, board):
    sysfs = fake_sysfs(tmp_path / "sys", ["ondemand", "schedutil"])
    script, state = GOLDEN / board / TUNING_SCRIPT, tmp_path / "state"
    assert run_tuning(script, "check", sysfs, state).returncode == 1  # drift before apply
    first = run_tuning(script, "apply", sysfs, state)
    assert first.returncode == 0, first.stderr
    assert governors(sysfs) == ["performance", "performance"]
    second = run_tuning(script, "apply", sysfs, state)
    assert "already performance" in second.stdout and "->" not in second.stdout
    assert run_tuning(script, "check", sysfs, state).returncode == 0
    (sysfs / "devices/system/cpu/cpufreq/policy1/scaling_governor").write_text("powersave\n")  # by hand
    assert run_tuning(script, "check", sysfs, state).returncode == 1
    assert run_tuning(script, "revert", sysfs, state).returncode == 0
    assert governors(sysfs) == ["ondemand", "schedutil"]
    if board == "orin-nano":  # nvpmodel / jetson_clocks absent here: said, not failed
        assert "nvpmodel not found" in first.stdout
