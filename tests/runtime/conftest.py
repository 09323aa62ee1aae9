"""Fixtures for runtime tests: one tiny INT8 bundle per session, and a way to run the CLI."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Return the directory of a tiny random-BERT INT8 bundle."""
    from edgefleet.model.tiny import tiny_bundle as build

    return build(tmp_path_factory.mktemp("tiny-runtime"), seed=1)["bundle_dir"]


@pytest.fixture(scope="session")
def task_bundles(task_models):
    """Return {"classify": dir, "qa": dir}: tiny random-BERT INT8 bundles with those heads."""
    return {task: paths["bundle_dir"] for task, paths in task_models.items()}


@pytest.fixture
def run_cli():
    """Run `python -m edge_runtime ARGS` with a bounded wait; return the CompletedProcess."""

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "edge_runtime", *map(str, args)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    return run


class FakeSysfs:
    """A sysfs tree under tmp_path: cpufreq policies and thermal zones the tests rewrite."""

    def __init__(self, root):
        self.root = root

    def policy(self, number, cpus="0 1", governor="performance", cur=1800000, top=2400000):
        path = self.root / f"devices/system/cpu/cpufreq/policy{number}"
        path.mkdir(parents=True, exist_ok=True)
        for name, value in [("affected_cpus", cpus), ("scaling_governor", governor),
                            ("scaling_cur_freq", cur), ("scaling_max_freq", top)]:
            (path / name).write_text(f"{value}\n")
        return self

    def zone(self, number, temp_c, kind="cpu-thermal"):
        path = self.root / f"class/thermal/thermal_zone{number}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "type").write_text(f"{kind}\n")
        (path / "temp").write_text(f"{int(round(temp_c * 1000))}\n")
        return self


@pytest.fixture
def fake_sysfs(tmp_path):
    """Return a FakeSysfs with one performance policy and one zone at 45 °C."""
    return FakeSysfs(tmp_path / "sys").policy(0).zone(0, 45.0)
